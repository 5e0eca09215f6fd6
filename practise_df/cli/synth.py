"""``practise-df synth``: synthesise a labelled image folder from a BatchNorm teacher (``synth.synthesize``).

    practise-df synth --model timm:resnet50 --weights pretrained --output-dir synth/ --num-images 5000
    accelerate launch -m practise_df.cli synth ... --device cuda     # one shard per process
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from synth import PRESETS, synthesize

from .._format import format_table
from ..checkpoint import load_model
from . import _args


def _classes(text: str) -> List[int]:
    try:
        return [int(c) for c in text.split(',') if c.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes comma-separated class indices such as 1,2,3; got '{text}'.") from None


def synth_command_parser(subparsers):
    parser = subparsers.add_parser('synth', help='synthesise images from a BatchNorm teacher (DeepInversion)')
    _args.add_model(parser)
    g = parser.add_argument_group('synthesis')
    g.add_argument('--num-images', type=_args.positive_int, required=True,
                   help=_args.NUM_IMAGES_HELP)
    g.add_argument('--preset', choices=sorted(PRESETS), default='fast',
                   help="'fast' (default, ours), 'natural' (fast with MCT's canvas crops and a natural-colour prior)"
                        " or 'reference' (DeepInversion's published settings)")
    g.add_argument('--synth-steps', type=_args.positive_int, default=None, help=_args.SYNTH_STEPS_HELP)
    _args.deprecated(g, '--iterations', '--synth-steps')
    _args.add_batch_size(g, 32)
    g.add_argument('--micro-batch', type=_args.positive_int, default=None,
                   help='images per forward pass: a larger batch is optimised in parts that match BatchNorm '
                        'statistics as one set')
    g.add_argument('--classes', type=_classes, default=None, help='comma-separated class indices (default: all)')
    g.add_argument('--student', default=None, help='student model spec: adds the Adaptive DeepInversion term')
    g.add_argument('--student-weights', default=None, help='weights of --student')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='autocast (default: on for CUDA, off on CPU)')
    _args.add_output_dir(parser, required=True, overwrite=False)  # the same command again resumes
    _args.deprecated(parser, '--out', '--output-dir')
    _args.add_common(parser)
    parser.set_defaults(func=synth_command, render=render_synth)
    return parser


def synth_command(args) -> dict:
    model, config = _args.load(args)
    student = load_model(args.student, args.student_weights) if args.student else None
    # A bare 'cuda' becomes each process's own GPU under `accelerate launch` (synth.synthesize).
    return synthesize(model, args.output_dir, args.num_images, data_config=config, preset=args.preset,
                      steps=args.synth_steps, micro_batch=args.micro_batch, batch_size=args.batch_size, seed=args.seed,
                      classes=args.classes, student=student, device=args.device, amp=args.amp, progress=not args.json)


def render_synth(r: Optional[dict]) -> str:
    rows = [
        ('images in folder', r['num_images']),
        ('generated now', f"{r['generated']} ({r['skipped_batches']} batch(es) already on disk)"),
        ('preset', f"{r['preset']}: {r['steps']} steps/batch at {r['resolution']} px, batch {r['batch_size']}"),
        ('teacher passes / image', r['teacher_passes_per_image']),
        ('images / s', r['images_per_second']),
        ('teacher top-1 = target', f"{r['top1_agreement']:.1f}%"),
        ('mean target probability', r['mean_teacher_prob']),
        ('BatchNorm loss (clean)', r['bn_loss']),
    ]
    return f"synthesised {r['out_dir']}\n" + format_table(rows, ('', 'value'))
