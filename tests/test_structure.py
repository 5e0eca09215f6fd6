"""The code's structure: layers point down only (practise_io imports neither package, synth never imports
practise_df), no import cycle, no import of our own modules hidden inside a function, a public API that
does not lose names, and scripts (benchmarks, recipes) and a README that call it with arguments and names
it has."""
import argparse
import ast
import importlib
import inspect
import os
import re

import practise_df
import synth
from practise_df.cli.compress import add_compress_arguments

from conftest import ROOT, cli_commands

PACKAGES = ('practise_io', 'synth', 'practise_df')  # lowest layer first


def _modules():
    """{dotted module name: parsed source} of every module of our packages."""
    found = {}
    for package in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
            for name in sorted(files):
                if name.endswith('.py'):
                    path = os.path.join(dirpath, name)
                    parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
                    module = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
                    found[module] = (ast.parse(open(path).read()), parts[-1] == '__init__')
    return found


def _imports(module: str, tree: ast.AST, is_package: bool, known: set):
    """(imported module, the import node) for every import of one of our modules, at any depth."""
    package = module if is_package else module.rpartition('.')[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] in PACKAGES:
                    yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit('.', node.level - 1)[0] if node.level > 1 else package
                base = f'{base}.{node.module}' if node.module else base
            else:
                base = node.module or ''
            if base.split('.')[0] not in PACKAGES:
                continue
            for alias in node.names:  # `from pkg import submodule` imports the submodule
                target = f'{base}.{alias.name}'
                yield (target if target in known else base), node


def _graph():
    modules = _modules()
    graph, nested = {}, []
    for module, (tree, is_package) in modules.items():
        graph[module] = set()
        top_level = {id(n) for n in tree.body}
        for target, node in _imports(module, tree, is_package, set(modules)):
            graph[module].add(target)
            if id(node) not in top_level and not _under_type_checking(tree, node):
                nested.append((module, target, node.lineno))
    return graph, nested


def _under_type_checking(tree, node) -> bool:
    return any(isinstance(n, ast.If) and 'TYPE_CHECKING' in ast.dump(n.test) and node in ast.walk(n)
               for n in tree.body)


def test_synth_never_imports_practise_df():
    graph, _ = _graph()
    up = sorted((m, t) for m, targets in graph.items() if m.split('.')[0] == 'synth'
                for t in targets if t.split('.')[0] == 'practise_df')
    assert not up, f'synth is the lower layer; these imports point up: {up}'


def test_the_io_layer_imports_neither_package():
    graph, _ = _graph()
    up = sorted((m, t) for m, targets in graph.items() if m.split('.')[0] == 'practise_io'
                for t in targets if t.split('.')[0] != 'practise_io')
    assert not up, f'practise_io is the lowest layer (files, locks); these imports point up: {up}'
    assert 'practise_io' in graph['synth.writer'] and 'practise_io' in graph['practise_df.pipeline']


def test_no_import_cycle():
    graph, _ = _graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f'import cycles: {cycles}'


def test_no_import_of_our_modules_inside_a_function():
    """An import hidden in a function usually dodges a cycle: the name lives in the wrong module."""
    _, nested = _graph()
    assert not nested, f'imports of practise_df/synth modules inside functions: {nested}'


def test_the_settings_are_at_the_bottom():
    """issue 30: config.py imported five implementation modules to check names (and checked the disk), so an old
    run.json could stop loading when that code changed; the settings import none of our modules now."""
    graph, _ = _graph()
    # _renamed (the deprecation decorator) is the one helper allowed: it imports nothing of ours either
    assert graph['practise_df.config'] <= {'practise_df._renamed'} and graph['practise_df._renamed'] == set()
    assert graph['practise_df.report'] == set()


def test_the_graph_sees_imports():  # the checks above must not pass because nothing was parsed
    graph, _ = _graph()
    assert 'practise_df.pipeline' in graph['practise_df.cli.compress']
    assert 'synth' in graph['practise_df.pipeline'] and 'synth.data' in graph['practise_df.pipeline']
    assert 'practise_df.cli._args' in graph['practise_df.cli.compress']


PUBLIC = {
    'practise_df': {'compress', 'CompressConfig', 'ImagesConfig', 'SynthesisConfig', 'ScoringConfig', 'LatencyConfig',
                    'FinetuneConfig', 'EvalConfig', 'RobustnessConfig', 'create_model', 'load_model',
                    'resolve_data_config', 'find_blocks', 'drop_blocks', 'score_blocks', 'select_blocks',
                    'drop_and_recover', 'save_compressed', 'load_compressed', 'measure_latency',
                    'block_latency_savings', 'finetune', 'evaluate', 'evaluate_robustness', 'synthesize'},
    'synth': {'synthesize', 'invert_batch', 'evaluate_images', 'InversionResult', 'InversionConfig', 'PRESETS',
              'get_preset', 'BatchNormStatHooks', 'competition_loss', 'load_images', 'SingleImageCrops',
              'HFImageDataset', 'HubUnreachableError', 'SynthesizedImages', 'read_synth_settings', 'class_to_idx',
              'merge_metadata'},
}


def test_public_api_is_listed_once_and_keeps_its_names():
    for module in (practise_df, synth):
        names = set(module.__all__)
        assert len(names) == len(module.__all__), 'a name listed twice'
        missing = PUBLIC[module.__name__] - names
        assert not missing, f'{module.__name__} lost public names: {missing}'
        assert all(getattr(module, n, None) is not None for n in names)
    assert not {'filter_prune', 'first_blocks', 'random_blocks'} & set(practise_df.__all__), \
        'benchmark baselines stay in practise_df.baselines'


def _resolve(node, names):
    """The library object an expression such as ``synthesize`` or ``synth.data.eval_transform`` names."""
    if isinstance(node, ast.Name):
        return names.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _resolve(node.value, names)
        return getattr(owner, node.attr, None) if owner is not None else None
    return None


def _library_calls(source: str):
    """(line, function, keywords it does not take) for every call of a practise_df / synth function in
    ``source`` (a script), and how many calls were checked."""
    tree = ast.parse(source)
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and not node.level and node.module.split('.')[0] in PACKAGES:
            module = importlib.import_module(node.module)
            names.update({a.asname or a.name: getattr(module, a.name, None) for a in node.names})
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split('.')[0] in PACKAGES:
                    importlib.import_module(a.name)  # loads the submodule, so it is an attribute of its package
                    bound = a.name if a.asname else a.name.split('.')[0]  # `import synth.data` binds synth
                    names[a.asname or bound] = importlib.import_module(bound)
    bad, checked = [], 0
    for node in ast.walk(tree):
        target = _resolve(node.func, names) if isinstance(node, ast.Call) else None
        if target is None or inspect.ismodule(target) or not callable(target):
            continue
        try:
            params = inspect.signature(target).parameters
        except (TypeError, ValueError):
            continue
        checked += 1
        if any(p.kind == p.VAR_KEYWORD for p in params.values()):
            continue
        unknown = [k.arg for k in node.keywords if k.arg is not None and k.arg not in params]
        if unknown:
            bad.append((node.lineno, getattr(target, '__name__', str(target)), unknown))
    return bad, checked


def test_scripts_call_the_library_with_arguments_it_takes():
    """Benchmarks and recipes are not run by the suite; a renamed parameter must still not break them
    unnoticed (bench_synth and bench_robustness passed synthesize's removed resolution= for a while)."""
    scripts = [os.path.join(d, f) for d in ('benchmarks', 'recipes', os.path.join('tests', 'scripts'))
               for f in sorted(os.listdir(os.path.join(ROOT, d))) if f.endswith('.py')]
    problems, total = [], 0
    for script in scripts:
        bad, checked = _library_calls(open(os.path.join(ROOT, script)).read())
        problems += [f'{script}:{line}: {name}() takes no {", ".join(kw)}' for line, name, kw in bad]
        total += checked
    assert not problems, '\n'.join(problems)
    assert len(scripts) > 15 and total > 100, 'the check must see the scripts and their calls'
    # and it finds such a call
    bad, _ = _library_calls('from synth import synthesize\nsynthesize(m, "out", 4, resolution=64)\n')
    assert bad == [(2, 'synthesize', ['resolution'])]


def _missing_names(text: str):
    """The dotted ``practise_df.*`` / ``synth.*`` names in ``text`` that import nothing."""
    missing = []
    for name in sorted(set(re.findall(r'\b((?:practise_df|synth)(?:\.[A-Za-z_]\w*)+)', text))):
        parts = name.split('.')
        for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                obj = importlib.import_module('.'.join(parts[:i]))
                break
            except ImportError:
                continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
        if obj is None:
            missing.append(name)
    return missing


def test_the_readme_names_only_what_exists():
    """Every practise_df.X / synth.X the README tells users to call exists (read_metadata was documented at
    the top level, where it never was)."""
    assert _missing_names(open(os.path.join(ROOT, 'README.md')).read()) == []
    assert _missing_names('call `practise_df.read_metadata(path)` or `synth.nothing_here`') == \
        ['practise_df.read_metadata', 'synth.nothing_here']


def _readme_commands(text: str):
    """Command lines of the README: lines of its code blocks and inline code that run practise-df or a recipe."""
    blocks = re.findall(r'```[a-z]*\n(.*?)```', text, flags=re.S)
    lines = [line for b in blocks for line in b.replace('\\\n', ' ').splitlines()]
    lines += re.findall(r'`([^`\n]+)`', re.sub(r'```[a-z]*\n.*?```', '', text, flags=re.S))
    return [line for line in lines if 'practise-df ' in line or 'recipes/' in line]


def test_the_readme_uses_only_flags_the_commands_have():
    """The README's commands spell every flag as its command declares it (the CLI's flags drifted once)."""
    commands = cli_commands()
    recipe = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)
    add_compress_arguments(recipe)  # every recipe takes compress's flags (recipe_main)
    lines, unknown = _readme_commands(open(os.path.join(ROOT, 'README.md')).read()), []
    for line in lines:
        command = re.search(r'practise-df (\w+)(.*)', line)
        if command and command.group(1) in commands:
            parser, args = commands[command.group(1)], command.group(2)
        elif re.search(r'recipes/\w+\.py', line):
            parser, args = recipe, re.split(r'recipes/\w+\.py', line, maxsplit=1)[1]
        else:
            continue
        args = args.split('#')[0]  # a shell comment may name other commands' flags
        unknown += [f'{flag} in: {line.strip()}' for flag in re.findall(r'(?<![\w-])--[a-z][\w-]*', args)
                    if flag not in parser._option_string_actions]
    assert len(lines) > 10, 'the README commands were found'
    assert not unknown, '\n'.join(unknown)
