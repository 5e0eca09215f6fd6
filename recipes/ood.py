"""PRACTISE recovered on out-of-domain images: any unlabeled image set stands in for the customer's data.

    accelerate launch recipes/ood.py --images hf:frgfm/imagenette:train      # a Hugging Face dataset (online)
    accelerate launch recipes/ood.py --images /data/places365_subset          # a local folder, nested or flat
    python recipes/ood.py --images crops:photo.jpg --num-images 2000          # crops of one large photo

Labels are never used (MiR feature mimicking learns from the teacher). Defaults: timm resnet50 with hub
weights, 2000 images, 5 blocks dropped, 2000 MiR steps (official finetuning settings).
"""
import sys

from practise_df.cli import recipe_main

DEFAULTS = {
    'model': 'timm:resnet50', 'weights': 'pretrained', 'output_dir': 'runs/ood',
    'images': {'num_images': 2000},
    'scoring': {'drop': 5},
    'finetune': {'steps': 2000},
}


def _require_images(args, defaults):
    if not getattr(args, 'images.source', None):
        raise ValueError('The OOD recipe needs --images: a folder, hf:NAME[:SPLIT], a save_to_disk directory '
                         'or crops:PHOTO.jpg. For no images at all, use recipes/datafree_resnet50.py.')


if __name__ == '__main__':
    sys.exit(recipe_main(__doc__, DEFAULTS, prepare=_require_images))
