"""``practise-df latency``: median latency, params and MACs, optionally with blocks dropped, or the
latency saved by dropping each block alone (``--per-block``: what ``compress --block-latency`` reads)."""
from __future__ import annotations

from .._format import format_table
from ..blocks import find_blocks
from ..latency import block_latency_savings, model_latency_report, runtime_info
from . import _args


def latency_command_parser(subparsers):
    parser = subparsers.add_parser('latency', help='latency, params and MACs (optionally with blocks dropped)')
    _args.add_model(parser)
    parser.add_argument('--blocks', type=_args.block_list, metavar='B1,B2', help=_args.BLOCKS_HELP)
    _args.deprecated(parser, '--drop', '--blocks', type=_args.block_list)
    parser.add_argument('--per-block', action='store_true',
                        help='latency saved by dropping each block alone (every candidate, or each of --blocks); '
                             'the --output file is what compress --block-latency reads')
    _args.add_batch_size(parser, 1)
    _args.add_runtime(parser)
    parser.add_argument('--warmup', type=_args.non_negative_int, default=5, help='untimed runs first')
    parser.add_argument('--repeats', type=_args.positive_int, default=20, help='timed runs (the median is reported)')
    _args.add_common(parser, seed=False)
    _args.add_output(parser)
    parser.set_defaults(func=latency_command, render=render_latency)
    return parser


def latency_command(args) -> dict:
    _args.check_output_file(args.output, args.overwrite)
    model, config = _args.load(args, weights_matter=False)
    size = config['input_size']
    timing = dict(batch_size=args.batch_size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                  runtime=args.runtime or 'torch', threads=args.threads)
    if args.per_block:
        blocks = args.blocks or find_blocks(model, size)
        result = {'model': args.model, 'input_size': list(size), **timing,
                  **runtime_info(timing['runtime'], args.device, args.threads),
                  'blocks': block_latency_savings(model, blocks, size, **timing)}
    else:
        result = {'model': args.model, **model_latency_report(model, size, drop=args.blocks, **timing)}
    _args.write_output(args.output, result)
    return result


def render_latency(r: dict) -> str:
    where = f"{r['runtime']}, {r['threads']} thread(s)" + (f", {r['provider']}" if r.get('provider') else '')
    head = f"batch {r['batch_size']}, input {tuple(r['input_size'])}, {r['device']} ({where}), {r['repeats']} runs\n"
    if 'blocks' in r:  # --per-block
        rows = [(b, v['latency_ms'], v['saved_ms'], v['saved_pct']) for b, v in r['blocks'].items()]
        return head + format_table(rows, ('dropped block', 'median ms', 'saved ms', 'saved %'))
    rows = [(v['name'], v['median_ms'], v['p10_ms'], v['p90_ms'], v['params'], v['macs'] / 1e6)
            for v in r['variants']]
    text = head + format_table(rows, ('model', 'median ms', 'p10 ms', 'p90 ms', 'params', 'MMACs'))
    if 'saved_pct' in r:
        text += f"\nlatency saved: {r['saved_pct']:.1f}%"
    return text
