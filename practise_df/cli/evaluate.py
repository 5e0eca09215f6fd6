"""``practise-df eval``: top-1/top-5 on labelled images, agreement with a teacher, and latency; ``--model`` may be
an exported ``.onnx`` file (run in ONNX Runtime)."""
from __future__ import annotations

from .._distributed import on_main_process
from .._format import format_table
from ..evaluate import evaluate_source
from ..latency import compare_latency
from ..runtime import OnnxRuntimeModel
from . import _args


def eval_command_parser(subparsers):
    parser = subparsers.add_parser('eval', help='top-1/top-5 accuracy and latency on an image folder')
    _args.add_model(parser)
    _args.add_data(parser)
    _args.add_teacher(parser)
    _args.add_batch_size(parser, 32)
    parser.add_argument('--max-images', type=_args.positive_int, help='evaluate a seeded subset of this many images')
    parser.add_argument('--workers', type=_args.non_negative_int, default=0, help='data loader worker processes')
    _args.add_timing(parser)
    _args.add_common(parser)
    _args.add_output(parser)
    parser.set_defaults(func=eval_command, render=render_eval)
    return parser


def eval_command(args) -> dict:
    _args.check_output_file(args.output, args.overwrite)
    model, config = _args.load(args)
    teacher = _args.load_teacher(args)
    result = evaluate_source(model, args.data, config, teacher=teacher, batch_size=args.batch_size,
                             max_images=args.max_images, seed=args.seed, num_workers=args.workers,
                             device=_args.process_device(args.device), progress=not args.json)
    runtime = 'onnxruntime' if isinstance(model, OnnxRuntimeModel) else 'torch'  # an .onnx file runs in ONNX Runtime
    timed = on_main_process(  # alone on the device, the teacher interleaved: the other processes wait
        lambda: compare_latency([model] + ([teacher] if teacher is not None else []), config['input_size'],
                                args.batch_size, args.device, repeats=args.repeats, runtime=runtime,
                                ci_width=args.ci_width, max_seconds=args.max_seconds))
    result = {'model': args.model, **result, 'latency_ms': timed.latencies[0].median_ms, 'batch_size': args.batch_size,
              'latency_runs': timed.rounds, 'latency_warning': timed.warning}
    if teacher is not None:
        result.update(teacher=args.teacher, teacher_latency_ms=timed.latencies[1].median_ms)
    _args.write_output(args.output, result)
    return result


def render_eval(r: dict) -> str:
    keys = [k for k in ('top1', 'top5', 'agreement') if k in r]
    rows = [[r['model'], r['images']] + [r[k] for k in keys] + [r['latency_ms']]]
    if 'teacher' in r:  # the baseline beside the model: its top-1 (when labelled) and latency
        teacher = {'top1': r.get('teacher_top1', '-'), 'top5': '-', 'agreement': '-'}
        rows.append([f"{r['teacher']} (teacher)", r['images']] + [teacher[k] for k in keys] + [r['teacher_latency_ms']])
    header = ['model', 'images'] + [k + ' %' for k in keys] + [f"latency ms (batch {r['batch_size']})"]
    text = format_table(rows, header)
    if r.get('skipped_files'):
        text += f"\n{r['skipped_files']} image file(s) did not decode and were skipped"
    if r.get('latency_warning'):
        text += f"\nwarning: {r['latency_warning']}"
    return text
