"""``practise-df score``: PRACTISE scores of a model's blocks on an image folder (``score_images``);
optionally select blocks and save the model with them dropped and the adaptors folded."""
from __future__ import annotations

import dataclasses

from .._format import format_interval, format_table
from ..scoring import ESTIMATORS, score_images
from . import _args


def score_command_parser(subparsers):
    parser = subparsers.add_parser('score', help='PRACTISE recoverability scores; optionally select, drop and save')
    _args.add_model(parser)
    _args.add_data(parser)
    parser.add_argument('--train-images', type=_args.positive_int, default=100, help='tiny set size')
    parser.add_argument('--heldout-images', type=_args.positive_int, default=100, help=_args.HELDOUT_HELP)
    parser.add_argument('--estimator', choices=sorted(ESTIMATORS), default='fast', help=_args.ESTIMATOR_HELP)
    parser.add_argument('--adaptor-steps', type=_args.positive_int, default=None,
                        help="optimizer steps fitting the adaptors (default: the estimator's)")
    _args.deprecated(parser, '--iterations', '--adaptor-steps')
    parser.add_argument('--candidates', type=_args.block_list, metavar='B1,B2',
                        help='score only these blocks (default: every droppable block)')
    _args.deprecated(parser, '--blocks', '--candidates')
    parser.add_argument('--latency-batch-size', type=_args.positive_int, default=1, help=_args.LATENCY_BATCH_HELP)
    _args.deprecated(parser, '--batch-size', '--latency-batch-size')
    _args.add_timing(parser, prefix='latency_')
    _args.add_selection(parser)
    _args.add_output_dir(parser)
    _args.deprecated(parser, '--output', '--output-dir')
    _args.add_common(parser)
    parser.set_defaults(func=score_command, render=render_score)
    return parser


def score_command(args) -> dict:
    model, config = _args.load(args)
    settings = ESTIMATORS[args.estimator]
    if args.adaptor_steps is not None:
        settings = dataclasses.replace(settings, steps=args.adaptor_steps)
    result = score_images(model, config, args.data, train_images=args.train_images,
                          heldout_images=args.heldout_images, blocks=args.candidates, settings=settings, drop=args.drop,
                          latency_reduction=args.latency_reduction,
                          latency_kwargs=dict(batch_size=args.latency_batch_size, device=args.device,
                                              repeats=args.latency_repeats, ci_width=args.latency_ci_width,
                                              max_seconds=args.latency_max_seconds),
                          output_dir=args.output_dir, overwrite=args.overwrite, seed=args.seed,
                          progress=not args.json)
    return {'model': args.model, 'estimator': args.estimator, **result}


def render_score(r: dict) -> str:
    """The scores, with each block's latency saving and its 95% interval (blocks whose intervals overlap are
    scored with one shared saving: ``practise_df.scoring.comparable_savings``)."""
    rows = [(s['block'], s['recoverability'], s['mse_dropped'], s['saved_pct'], format_interval(s), s['score'])
            for s in r['scores']]
    text = f"{r['model']} ({r['estimator']} estimator, lower score = drop first)\n" + format_table(
        rows, ('block', 'recoverability', 'mse dropped', 'saved %', '95% interval', 'score'))
    if r.get('selected'):
        text += f"\nselected: {', '.join(r['selected'])}"
    if r.get('output'):
        text += f"\nsaved compressed model to {r['output']}"
    return text
