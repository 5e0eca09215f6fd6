"""Data-free PRACTISE on ResNet-50: no real image is used.

    accelerate launch recipes/datafree_resnet50.py                       # hub weights (online)
    accelerate launch recipes/datafree_resnet50.py --teacher-weights resnet50.pth
    python recipes/datafree_resnet50.py --teacher-weights random --num-images 16 --resolution 64 \\
        --iterations 5 --finetune-iters 5 --output-dir /tmp/smoke        # smoke run, any machine

Pipeline: BatchNorm-inversion images at ImageNet scale (synth preset 'fast') -> PRACTISE block
scores -> drop -> MiR finetuning -> report. Defaults follow the paper's data-free setting and the
official code: 500 synthetic images (the official tiny-set size), 2000 MiR iterations, SGD lr 0.02,
momentum 0.9, weight decay 1e-4, batch 64, StepLR x0.1 at 40%. Ours: the number of blocks dropped (5 of
the 12 candidates) and frozen BatchNorm statistics while finetuning (the official code trains BatchNorm
on real images; on synthesized ones that collapses the student, see BENCHMARKS.md). Every default can
be overridden by flag (`--help`, e.g. `--no-freeze-bn`).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from practise_df.cli import recipe_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, model='timm:resnet50', weights='pretrained', num_images=500, drop=5,
                         freeze_bn=True, finetune_iters=2000, batch_size=64, lr=0.02,
                         output_dir='runs/datafree_resnet50'))
