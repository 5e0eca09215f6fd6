"""``practise-df blocks``: the droppable blocks of a model (``find_blocks``), or model names."""
from __future__ import annotations

import fnmatch

import timm
import torchvision

from .._format import format_table
from ..blocks import find_blocks
from ..latency import count_params
from . import _args


def blocks_command_parser(subparsers):
    parser = subparsers.add_parser('blocks', help='list the droppable blocks of a model')
    parser.add_argument('--list', metavar='PATTERN',
                        help="list model names matching a pattern instead (e.g. 'resnet*')")
    _args.add_model(parser, required=False)
    _args.add_common(parser, device_flag=False, seed=False)
    parser.set_defaults(func=blocks_command, render=render_blocks)
    return parser


def blocks_command(args) -> dict:
    if args.list:
        return {'models': [f'timm:{n}' for n in timm.list_models(args.list)] +
                [f'torchvision:{n}' for n in fnmatch.filter(torchvision.models.list_models(), args.list)]}
    if not args.model:
        raise ValueError('blocks needs --model SPEC (or --list PATTERN).')
    model, config = _args.load(args, weights_matter=False)
    return {'model': args.model, 'blocks': [
        {'name': n, 'type': type(model.get_submodule(n)).__name__, 'params': count_params(model.get_submodule(n))}
        for n in find_blocks(model, config['input_size'])]}


def render_blocks(r: dict) -> str:
    if 'models' in r:
        return '\n'.join(r['models'])
    rows = [(b['name'], b['type'], b['params']) for b in r['blocks']]
    return f"{r['model']}: {len(rows)} droppable blocks\n" + format_table(rows, ('block', 'type', 'params'))
