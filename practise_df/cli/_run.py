"""Running a command: its result rendered (or printed as JSON), every expected failure a message and
exit status 2 instead of a traceback."""
from __future__ import annotations

import errno
import json
import os
import sys
from typing import Any, Callable

from .._distributed import process_state


def run_command(prog: str, func: Callable, render: Callable[[Any], str], args) -> int:
    # Intel MKL's GEMM is not repeatable run to run with several threads unless its reproducible mode is on
    # (a 3x3 convolution on a 1x1 map, as small inputs reach, runs as GEMM); read at MKL's first call, so set
    # before any work. Measured cost: none outside timing noise (BENCHMARKS.md, CPU determinism).
    os.environ.setdefault('MKL_CBWR', 'AUTO')
    try:
        result = func(args)
    except KeyboardInterrupt:
        print(f'\n{prog}: interrupted. Every file written so far is complete: `compress` continues with the same '
              'command and --resume, `synth` with the same command.', file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, NotADirectoryError, IsADirectoryError) as e:
        print(f'{prog}: error: {e}', file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno == errno.ENOSPC:
            print(f'{prog}: error: the disk is full ({e.filename or e}). The files written before are complete and '
                  'load; free some space and run the same command again (compress: with --resume).', file=sys.stderr)
        elif e.errno == errno.EIO:
            print(f'{prog}: error: {e}', file=sys.stderr)
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            print(f"{prog}: error: cannot write '{e.filename}': {e.strerror}. Choose a writable output path.",
                  file=sys.stderr)
        else:
            raise
        return 2
    if result and process_state().is_main_process:  # under accelerate launch every process has the result
        as_json = result.to_dict() if hasattr(result, 'to_dict') else result  # a typed result (Report)
        print(json.dumps(as_json, indent=2) if getattr(args, 'json', False) else render(result))
    return 0
