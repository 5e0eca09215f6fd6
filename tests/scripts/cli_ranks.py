"""``practise-df`` commands, one after the other, in each rank of ``accelerate launch``; used by
tests/test_distributed.py (one launch serves several commands: each launch costs tens of seconds).

    cli_ranks.py [--kill-rank R --kill-after N] :: COMMAND ARGS... [:: COMMAND ARGS...]

(``::``, not ``--``: argparse, which ``accelerate launch`` reads its arguments with, swallows a ``--``.)

With ``--kill-rank R --kill-after N``, rank R kills itself (SIGKILL, as the OOM killer would) once it has
journaled N block scores.
"""
import os
import signal
import sys

if __name__ == '__main__':
    args = sys.argv[1:]
    first = args.index('::')
    own, commands = args[:first], []
    for arg in args[first:]:
        commands.append([]) if arg == '::' else commands[-1].append(arg)
    rank = int(os.environ.get('RANK', 0))
    if '--kill-rank' in own and rank == int(own[own.index('--kill-rank') + 1]):
        import practise_df.pipeline as pipeline
        after, append, journaled = int(own[own.index('--kill-after') + 1]), pipeline.append_jsonl, []

        def append_then_die(path, records):
            append(path, records)
            journaled.append(path)
            if len(journaled) == after:
                os.kill(os.getpid(), signal.SIGKILL)
        pipeline.append_jsonl = append_then_die

    from accelerate import PartialState

    from practise_df.cli import main
    # One process group serves every command: compress's end_training would close it, and gloo cannot open a
    # second one under the same launcher.
    PartialState.destroy_process_group = lambda self, group=None: None
    for command in commands:
        status = main(command)
        if status:
            sys.exit(status)
