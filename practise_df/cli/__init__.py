"""``practise-df`` command line: each command module parses, calls one API function and renders.

    practise-df blocks     --model SPEC                        -> find_blocks
    practise-df latency    --model SPEC [--drop B1,B2]         -> measure_latencies / block_latency_savings
    practise-df score      --model SPEC [--images D]           -> compress(stop_after='drop')
    practise-df eval       --model SPEC|DIR --data D           -> evaluate_source
    practise-df synth      --model SPEC --output-dir DIR       -> synth.synthesize
    practise-df compress   --model SPEC --drop K ...           -> compress
    practise-df robustness --model SPEC|DIR --data D           -> evaluate_folder_robustness
    practise-df export     --model SPEC|DIR --output FILE      -> export_model
"""
from __future__ import annotations

import argparse
import functools
import logging
from typing import Optional, Sequence

from .. import __version__
from . import _args
from ._run import run_command
from .blocks import blocks_command_parser
from .compress import compress_command_parser, recipe_main
from .evaluate import eval_command_parser
from .export import export_command_parser
from .latency import latency_command_parser
from .robustness import robustness_command_parser
from .score import score_command_parser
from .synth import synth_command_parser

__all__ = ['main', 'build_parser', 'recipe_main']

COMMANDS = (blocks_command_parser, latency_command_parser, score_command_parser, eval_command_parser,
            synth_command_parser, compress_command_parser, robustness_command_parser, export_command_parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='practise-df', description='Drop blocks of a pretrained vision model '
                                     'and recover it without the original data.')
    parser.add_argument('--version', action='version', version=f'%(prog)s {__version__}')
    parser.add_argument('-v', '--verbose', action='store_true', help='log progress details')
    subparsers = parser.add_subparsers(dest='command', required=True, parser_class=functools.partial(
        argparse.ArgumentParser, formatter_class=_args.HelpFormatter))
    for add in COMMANDS:
        add(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, 'verbose', False) else logging.WARNING,
                        format='%(levelname)s %(message)s')
    return run_command(f'practise-df {args.command}', functools.partial(_checked, args.func), args.render, args)


def _checked(func, args):
    _args.check_outputs(args)  # every command: no output in place of an input
    return func(args)
