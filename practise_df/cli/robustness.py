"""``practise-df robustness``: accuracy under the 15 ImageNet-C corruptions, with the teacher as baseline."""
from __future__ import annotations


from .._distributed import process_state
from ..robustness import evaluate_folder_robustness, parse_corruptions, parse_severities, robustness_table, \
    save_heatmap
from . import _args


def robustness_command_parser(subparsers):
    parser = subparsers.add_parser('robustness', help='accuracy under the 15 ImageNet-C corruptions, with the '
                                                      'teacher as baseline')
    _args.add_model(parser)
    _args.add_data(parser)
    _args.add_teacher(parser)
    parser.add_argument('--corruptions', default='all',
                        help='comma list of names or groups (noise, blur, weather, digital); default all 15')
    parser.add_argument('--severities', default='1-5', help="e.g. '1,5' or '1-5'")
    parser.add_argument('--max-images', type=_args.positive_int, help='evaluate a seeded subset of this many images')
    _args.add_batch_size(parser, 32)
    parser.add_argument('--workers', type=_args.non_negative_int, default=0, help='data loader worker processes')
    parser.add_argument('--heatmap', metavar='PNG', help='write a corruption x severity heatmap (needs matplotlib)')
    _args.add_common(parser)
    _args.add_output(parser)
    parser.set_defaults(func=robustness_command, render=render_robustness)
    return parser


def robustness_command(args) -> dict:
    parse_corruptions(args.corruptions), parse_severities(args.severities)  # bad names fail before any work
    _args.check_output_file(args.output, args.overwrite)
    _args.check_output_file(args.heatmap, args.overwrite, '--heatmap')
    model, config = _args.load(args)
    result = {'model': args.model, 'teacher': args.teacher}
    result.update(evaluate_folder_robustness(
        model, args.data, config, teacher=_args.load_teacher(args), corruptions=args.corruptions,
        severities=args.severities, max_images=args.max_images, batch_size=args.batch_size, seed=args.seed,
        device=_args.process_device(args.device), num_workers=args.workers, progress=not args.json))
    if args.output:
        result['output'] = args.output
        _args.write_output(args.output, result)  # the numbers first: a failed picture loses nothing
    if args.heatmap and process_state().is_main_process:
        try:
            result['heatmap'] = save_heatmap(result, args.heatmap, title=f'{args.model} on {args.data}')
        except (ImportError, OSError, ValueError) as e:
            result['heatmap'] = f'not drawn: {e}'
        _args.write_output(args.output, result)
    return result


def render_robustness(r: dict) -> str:
    text = f"{r['model']} on {r['data']}" + (f" (baseline: teacher {r['teacher']})" if r.get('teacher') else '')
    text += '\n' + robustness_table(r)
    for key in ('heatmap', 'output'):
        if r.get(key):
            text += f'\n{key}: {r[key]}'
    if r.get('skipped_files'):
        text += f"\n{r['skipped_files']} image file(s) did not decode and were skipped"
    return text
