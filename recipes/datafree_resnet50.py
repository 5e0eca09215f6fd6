"""Data-free PRACTISE on ResNet-50: no real image is used.

    accelerate launch recipes/datafree_resnet50.py                       # hub weights (online)
    accelerate launch recipes/datafree_resnet50.py --weights resnet50.pth   # local weights (offline)
    python recipes/datafree_resnet50.py --weights random --num-images 16 --input-size 64 \\
        --synth-steps 5 --finetune-steps 5 --output-dir /tmp/smoke      # smoke run, any machine

Pipeline: BatchNorm-inversion images at ImageNet scale (synth preset 'fast') -> PRACTISE block
scores -> drop -> MiR finetuning -> report. Defaults follow the paper's data-free setting and the
official code: 500 synthetic images (the official tiny-set size), 2000 MiR steps, SGD lr 0.02,
momentum 0.9, weight decay 1e-4, batch 64, StepLR x0.1 at 40%. Ours: the number of blocks dropped (5 of
the 12 candidates) and frozen BatchNorm statistics while finetuning (the official code trains BatchNorm
on real images; on synthesized ones that collapses the student, see BENCHMARKS.md). Every default can
be overridden by flag (`--help`), or all at once with `--config FILE`.
"""
import sys

from practise_df.cli import recipe_main

DEFAULTS = {
    'model': 'timm:resnet50', 'weights': 'pretrained', 'output_dir': 'runs/datafree_resnet50',
    'images': {'num_images': 500},
    'scoring': {'drop': 5},
    'finetune': {'loss': 'mir', 'steps': 2000, 'batch_size': 64, 'lr': 0.02},
}

if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, DEFAULTS))
