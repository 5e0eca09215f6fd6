"""Few-shot PRACTISE: a few real labelled images per class (the paper's main setting).

    accelerate launch recipes/fewshot.py --images /data/imagenet_50shot --num-images 500
    accelerate launch recipes/fewshot.py --images /data/imagenet_50shot --loss ce     # 'BP' baseline

The folder has one subfolder per class (sorted names = class indices, or numeric names). Defaults:
timm resnet50 with hub weights, 500 images (the official tiny-set size), 5 blocks dropped, 2000 MiR
steps with train-mode BatchNorm, as the official code (the images are real: `--real-images`);
`--loss ce` trains on the labels instead (plain backpropagation), `--loss kd` on logits.
"""
import os
import sys

from practise_df.cli import recipe_main

DEFAULTS = {
    'model': 'timm:resnet50', 'weights': 'pretrained', 'output_dir': 'runs/fewshot',
    'images': {'num_images': 500, 'real': True},
    'scoring': {'drop': 5},
    'finetune': {'steps': 2000},
}


def _require_folder(args, defaults):
    images = getattr(args, 'images.source', None)
    if not images or not os.path.isdir(images):
        raise ValueError(f"The few-shot recipe needs --images DIR, a folder with one subfolder per class "
                         f"(got {images!r}).")


if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, DEFAULTS, prepare=_require_folder))
