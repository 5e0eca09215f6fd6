"""One rank of a tiny ``practise-df compress`` under ``accelerate launch``; used by tests/test_distributed.py.

    compress_ranks.py AUDIT_DIR [--crash-rank R [--crash-in finetune|scoring]] -- COMPRESS ARGS...

Every file this rank opens for writing (or renames into place) is listed in AUDIT_DIR/rank{N}.txt,
through Python's audit hooks, so the test can check that no two ranks write the same file. With
``--crash-rank R``, rank R fails as finetuning starts, as a rank that runs out of memory would
(``--crash-in scoring``: as scoring starts).
"""
import os
import sys

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def audit_writes(log_path):
    written = set()

    def hook(event, args):
        if event == 'open' and isinstance(args[0], (str, bytes, os.PathLike)):
            mode, flags = args[1], args[2]
            if (mode and any(c in mode for c in 'wax+')) or (mode is None and flags & WRITE_FLAGS):
                written.add(os.path.realpath(os.fsdecode(args[0])))
        elif event == 'os.rename':
            written.add(os.path.realpath(os.fsdecode(args[1])))

    sys.addaudithook(hook)
    import atexit

    def dump():
        with open(log_path + '.tmp', 'w') as f:
            f.write('\n'.join(sorted(p for p in written if not p.startswith(log_path))))
        os.rename(log_path + '.tmp', log_path)

    atexit.register(dump)


if __name__ == '__main__':
    split = sys.argv.index('--')
    own, compress_args = sys.argv[1:split], sys.argv[split + 1:]
    rank = int(os.environ.get('RANK', 0))
    audit_writes(os.path.join(own[0], f'rank{rank}.txt'))
    if '--crash-rank' in own and rank == int(own[own.index('--crash-rank') + 1]):
        import importlib
        stage = own[own.index('--crash-in') + 1] if '--crash-in' in own else 'finetune'

        def failing(*args, **kwargs):
            raise RuntimeError(f'injected failure on rank {rank}')
        target = {'finetune': 'finetune', 'scoring': 'score_blocks'}[stage]
        setattr(importlib.import_module('practise_df.pipeline'), target, failing)

    from practise_df.cli import main
    sys.exit(main(['compress', *compress_args]))
