"""``practise-df latency``: median latency, params and MACs, optionally with blocks dropped, or the
latency saved by dropping each block alone (``--per-block``: what ``compress --block-latency`` reads).
A compressed model is timed beside the teacher it came from; an exported ``.onnx`` file in ONNX Runtime.
Every saving comes with its 95% interval (``practise_df.latency.compare_latency``)."""
from __future__ import annotations

from .._format import format_interval, format_table
from ..blocks import find_blocks
from ..checkpoint import is_compressed_dir, read_config
from ..latency import block_latency, model_latency_report
from ..models import create_model
from ..runtime import OnnxRuntimeModel
from . import _args


def latency_command_parser(subparsers):
    parser = subparsers.add_parser('latency', help='latency, params and MACs (optionally with blocks dropped)')
    _args.add_model(parser)
    parser.add_argument('--blocks', type=_args.block_list, metavar='B1,B2', help=_args.BLOCKS_HELP)
    _args.deprecated(parser, '--drop', '--blocks')
    parser.add_argument('--per-block', action='store_true',
                        help='latency saved by dropping each block alone (every candidate, or each of --blocks); '
                             'the --output file is what compress --block-latency reads')
    _args.add_batch_size(parser, 1)
    _args.add_runtime(parser)
    parser.add_argument('--warmup', type=_args.non_negative_int, default=5, help='untimed runs first')
    _args.add_timing(parser)
    _args.add_common(parser, seed=False)
    _args.add_output(parser)
    parser.set_defaults(func=latency_command, render=render_latency)
    return parser


def latency_command(args) -> dict:
    _args.check_output_file(args.output, args.overwrite)
    model, config = _args.load(args, weights_matter=False)
    size = config['input_size']
    runtime = args.runtime or 'torch'
    if isinstance(model, OnnxRuntimeModel):
        if args.runtime == 'torch':
            raise ValueError(f"'{args.model}' is an ONNX file: it runs in ONNX Runtime, not PyTorch. Drop "
                             '--runtime torch (or pass --runtime onnxruntime).')
        if args.blocks or args.per_block:
            raise ValueError(f"'{args.model}' is an exported graph: its blocks cannot be dropped. Pass the model it "
                             'was exported from (a spec or compressed-model directory) with --blocks / --per-block.')
        runtime = 'onnxruntime'
    timing = dict(batch_size=args.batch_size, device=args.device, warmup=args.warmup, repeats=args.repeats,
                  runtime=runtime, threads=args.threads, ci_width=args.ci_width, max_seconds=args.max_seconds)
    if args.per_block:
        result = {'model': args.model, **block_latency(model, args.blocks or find_blocks(model, size), size, **timing)}
    else:
        result = {'model': args.model, **model_latency_report(model, size, drop=args.blocks,
                                                              baseline=_teacher_of(args.model), **timing)}
    _args.write_output(args.output, result)
    return result


def _teacher_of(model: str):
    """('teacher SPEC', the architecture it was made from) for a compressed-model directory, else None.
    Built with random weights: the time of a forward pass does not depend on them."""
    if not is_compressed_dir(model):
        return None
    source = read_config(model)['source']
    return f"teacher {source['model']}", create_model(source['model'], **source.get('kwargs', {}))


def render_latency(r: dict) -> str:
    where = f"{r['runtime']}, {r['threads']} thread(s)" + (f", {r['provider']}" if r.get('provider') else '')
    head = (f"batch {r['batch_size']}, input {tuple(r['input_size'])}, {r['device']} ({where}), {r['runs']} runs "
            f"({r['seconds']:.0f} s, stopped by {r['stopped']}), other processes used {r['load']['other_cores']:.1f} "
            f"of {r['load']['cpu_count']} cores\n")
    if 'blocks' in r:  # --per-block
        rows = [(b, v['latency_ms'], v['saved_ms'], v['saved_pct'], format_interval(v)) for b, v in r['blocks'].items()]
        text = head + format_table(rows, ('dropped block', 'median ms', 'saved ms', 'saved %', '95% interval'))
    else:
        rows = [(v['name'], v['median_ms'], v['p10_ms'], v['p90_ms'], _or_na(v['params']),
                 _or_na(v['macs'] and v['macs'] / 1e6)) for v in r['variants']]
        text = head + format_table(rows, ('model', 'median ms', 'p10 ms', 'p90 ms', 'params', 'MMACs'))
        if 'saved_pct' in r:
            text += f"\nlatency saved ({r['compared'][1]} vs {r['compared'][0]}): {r['saved_pct']:.1f}%, 95% " \
                    f'interval {format_interval(r)}'
    return text + (f"\nwarning: {r['warning']}" if r.get('warning') else '')


def _or_na(value):
    return 'n/a' if value is None else value
