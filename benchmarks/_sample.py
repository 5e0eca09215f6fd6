"""The tf_efficientnet_lite0 teacher (offline ImageNet weights) and the 1000 images of
../shared/data/imagenet-sample, shared by the benchmarks that score ImageNet students."""
import os

import torch

from practise_df import create_model, evaluate
from synth.data import load_image_tensor
from practise_df.models import efficientnet_lite0_weights, resolve_data_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET_SAMPLE = os.path.join(ROOT, '..', 'shared', 'data', 'imagenet-sample')


def lite0_teacher():
    """(teacher in eval mode, its timm data config)."""
    teacher = create_model('timm:tf_efficientnet_lite0', weights=efficientnet_lite0_weights()).eval()
    return teacher, resolve_data_config(teacher)


def sample_images(data_config, folder: str = IMAGENET_SAMPLE):
    """(images, labels) of every image in ``folder`` with the teacher's evaluation transform."""
    if not os.path.isdir(folder):
        raise SystemExit(f'{folder} not found: these benchmarks evaluate on the imagenet-sample images')
    return load_image_tensor(folder, data_config)


def top1(model, images: torch.Tensor, labels: torch.Tensor, keep=None) -> float:
    """Top-1 (%) on the images, or on those whose index is in ``keep``, rounded to 0.1."""
    index = torch.tensor(sorted(keep)) if keep is not None else torch.arange(len(images))
    return round(evaluate(model, [(images[i], labels[i]) for i in index.split(100)], progress=False)['top1'], 1)


def chosen_variants(parser, text: str, variants) -> list:
    """The comma list ``text`` of variant names, each checked against ``variants`` (parser error otherwise)."""
    names = [v for v in text.split(',') if v]
    unknown = [v for v in names if v not in variants]
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from {", ".join(variants)}')
    return names
