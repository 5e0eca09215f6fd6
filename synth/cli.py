"""``practise-df synth``: synthesise a training set from a BatchNorm teacher.

    practise-df synth --model timm:resnet50 --weights pretrained --out synth/ --num-images 5000
    accelerate launch -m practise_df.cli synth ... --device cuda     # one shard per process

Wired into ``practise_df/cli.py`` with ``add_synth_arguments``, ``synth_command`` and ``render_synth``.
"""
from __future__ import annotations

import argparse
from typing import List, Optional

from .presets import PRESETS

__all__ = ['add_synth_arguments', 'synth_command', 'render_synth']


def _parse_classes(text: Optional[str]) -> Optional[List[int]]:
    if not text:
        return None
    try:
        return [int(c) for c in text.split(',') if c.strip()]
    except ValueError:
        raise ValueError(f"--classes takes comma-separated class indices such as 1,2,3; got '{text}'.") from None


def add_synth_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``synth`` arguments (and the shared model arguments) to a sub-parser."""
    from practise_df.cli import add_model_args
    add_model_args(parser)
    g = parser.add_argument_group('synthesis')
    g.add_argument('--out', required=True, help='output image folder (one subfolder per class + metadata.jsonl); '
                                                'run the same command again to resume')
    g.add_argument('--num-images', type=int, required=True, help='exact number of images in the folder at the end')
    g.add_argument('--preset', choices=sorted(PRESETS), default='fast',
                   help="'fast' (default, ours) or 'reference' (DeepInversion's published settings)")
    g.add_argument('--resolution', type=int, default=None, help="final image size (default: the model's input size)")
    g.add_argument('--iterations', type=int, default=None,
                   help="optimisation steps per batch (default: the preset's; its phases are scaled)")
    g.add_argument('--batch-size', type=int, default=32, help='images optimised together (>= 16 recommended)')
    g.add_argument('--seed', type=int, default=0)
    g.add_argument('--classes', default=None, help='comma-separated class indices (default: all, balanced)')
    g.add_argument('--student', default=None, help='student model spec: adds the Adaptive DeepInversion term')
    g.add_argument('--student-weights', default=None, help='weights of --student')
    g.add_argument('--amp', action=argparse.BooleanOptionalAction, default=None,
                   help='autocast (default: on for CUDA, off on CPU)')
    return parser


def synth_command(args: argparse.Namespace) -> dict:
    from practise_df.cli import load_from_args
    from practise_df.models import create_model

    from .synthesize import synthesize

    model, config = load_from_args(args)
    student = create_model(args.student, args.student_weights) if args.student else None
    # A bare 'cuda' becomes each process's own GPU under `accelerate launch` (synth.synthesize).
    return synthesize(model, args.out, args.num_images, data_config=config, resolution=args.resolution,
                      iterations=args.iterations, batch_size=args.batch_size, seed=args.seed,
                      classes=_parse_classes(args.classes), preset=args.preset, student=student, device=args.device,
                      amp=args.amp, progress=not args.json)


def render_synth(r: dict) -> str:
    from practise_df._format import format_table
    rows = [
        ('images in folder', r['num_images']),
        ('generated now', f"{r['generated']} ({r['skipped_batches']} batch(es) already on disk)"),
        ('preset', f"{r['preset']}: {r['iterations']} steps/batch at {r['resolution']} px, batch {r['batch_size']}"),
        ('teacher passes / image', r['teacher_passes_per_image']),
        ('images / s', r['images_per_second']),
        ('teacher top-1 = target', f"{r['top1_agreement']:.1f}%"),
        ('mean target probability', r['mean_teacher_prob']),
        ('BatchNorm loss (clean)', r['bn_loss']),
    ]
    return f"synthesised {r['out_dir']}\n" + format_table(rows, ('', 'value'))
