"""Lines of the library (``practise_df`` and ``synth``) at git revisions: physical, blank, comment, docstring
and code lines (the rest). Issue 16 asks for the restructure's net lines of code to go down; this is how
BENCHMARKS.md counts them.

    python benchmarks/count_lines.py 89bb309^ 89bb309 HEAD WORKTREE

WORKTREE counts the tracked files as they are on disk. Per-file code-line changes between the first two
revisions with ``--per-file``.
"""
import argparse
import ast
import io
import os
import subprocess
import tokenize

from common import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ('practise_df', 'synth')
KINDS = ('physical', 'blank', 'comment', 'docstring', 'code')
SKIP = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)


def _git(*args: str) -> str:
    return subprocess.run(['git', *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout


def sources(rev: str) -> dict:
    """{path: text} of the library's Python files at ``rev`` (or on disk for WORKTREE)."""
    if rev == 'WORKTREE':
        paths = _git('ls-files', *PACKAGES).split()
        return {p: open(os.path.join(ROOT, p)).read() for p in paths if p.endswith('.py')}
    paths = _git('ls-tree', '-r', '--name-only', rev, *PACKAGES).split()
    return {p: _git('show', f'{rev}:{p}') for p in paths if p.endswith('.py')}


def count(src: str) -> dict:
    lines = src.splitlines()
    docs = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            value = first.value if isinstance(first, ast.Expr) else None
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docs.update(range(first.lineno, first.end_lineno + 1))
    code, comments = set(), set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            comments.add(tok.start[0])
        elif tok.type not in SKIP:
            code.update(n for n in range(tok.start[0], tok.end[0] + 1) if n not in docs)
    return {'physical': len(lines), 'blank': sum(1 for line in lines if not line.strip()),
            'comment': len(comments - code - docs), 'docstring': len(docs), 'code': len(code)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('revisions', nargs='+', help='git revisions, or WORKTREE')
    p.add_argument('--per-file', action='store_true', help='code-line change per file between the first two')
    args = p.parse_args()
    per_rev = {rev: {path: count(src) for path, src in sources(rev).items()} for rev in args.revisions}
    print('\n'.join(markdown_table(['revision', *KINDS], [[rev, *(sum(f[k] for f in files.values()) for k in KINDS)]
                                                          for rev, files in per_rev.items()])))
    if args.per_file and len(args.revisions) > 1:
        a, b = per_rev[args.revisions[0]], per_rev[args.revisions[1]]
        for path in sorted(set(a) | set(b), key=lambda f: b.get(f, {}).get('code', 0) - a.get(f, {}).get('code', 0)):
            delta = b.get(path, {}).get('code', 0) - a.get(path, {}).get('code', 0)
            if delta:
                print(f'{delta:+5d} {path}')


if __name__ == '__main__':
    main()
