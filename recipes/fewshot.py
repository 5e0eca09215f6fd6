"""Few-shot PRACTISE: a few real labelled images per class (the paper's main setting).

    accelerate launch recipes/fewshot.py --images /data/imagenet_50shot --num-images 500
    accelerate launch recipes/fewshot.py --images /data/imagenet_50shot --loss ce     # 'BP' baseline

The folder has one subfolder per class (sorted names = class indices, or numeric names). Defaults:
timm resnet50 with hub weights, 500 images (the official tiny-set size), 5 blocks dropped, 2000 MiR
iterations; `--loss ce` trains on the labels instead (plain backpropagation), `--loss kd` on logits.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from practise_df.cli import recipe_main  # noqa: E402


def _require_folder(args):
    if not args.images or not os.path.isdir(args.images):
        raise ValueError(f"The few-shot recipe needs --images DIR, a folder with one subfolder per class "
                         f"(got {args.images!r}).")


if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, prepare=_require_folder, model='timm:resnet50', weights='pretrained',
                         num_images=500, drop=5, finetune_iters=2000, output_dir='runs/fewshot'))
