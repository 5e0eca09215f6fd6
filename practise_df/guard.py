"""A label-free check of a recovery: is the finetuned student closer to the teacher than the plainly
dropped one, on natural photos that neither was trained on?

Finetuning on synthesized or out-of-domain images can move a student away from the teacher on real
images while it matches the teacher better on the images it was trained on. So the check runs on
other images: crops of natural photos (by default the public-domain and CC0 sample photos shipped with
scikit-image, so it works offline; ``guard_images`` takes the user's own). :func:`compare` measures
both students against the teacher there; :func:`choose` keeps the finetuned one only when the signal
says it is closer. ``benchmarks/bench_datafree.py --guard`` measures how often each signal picks the
student with the higher real top-1.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from synth import SingleImageCrops
from synth.ood import photo_paths

from .models import PrePoolFeatures, model_device

# scikit-image's natural photos with no copyright restriction: astronaut (NASA, public domain), chelsea
# (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (SpaceX, public domain).
SAMPLE_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg')
SIGNALS = {'agreement': +1, 'kl': -1, 'feature_mse': -1}  # +1: higher is closer to the teacher


def sample_photos() -> Tuple[str, ...]:
    """Paths of the sample photos (needs scikit-image, a dependency of practise-df)."""
    import skimage.data  # only to find its folder
    folder = os.path.dirname(skimage.data.__file__)
    return tuple(os.path.join(folder, name) for name in SAMPLE_PHOTOS)


def guard_images(data_config: dict, source: Optional[Sequence[str]] = None, num_images: int = 256,
                 seed: int = 0) -> torch.Tensor:
    """``num_images`` crops (8-100% of the area, no colour change) of the photos in ``source`` (files or
    folders; default: :func:`sample_photos`), preprocessed for the model, as one tensor."""
    paths = photo_paths(source) if source else sample_photos()
    crops = SingleImageCrops(paths, num_images, data_config, seed=seed, scale=(0.08, 1.0), color_jitter=0.0)
    return torch.stack([crops[i][0] for i in range(num_images)])


@torch.no_grad()
def compare(student: nn.Module, teacher: nn.Module, images: torch.Tensor, batch_size: int = 64) -> Dict[str, float]:
    """How close ``student`` is to ``teacher`` on ``images``: top-1 agreement (%), mean KL divergence of the
    student's predictions from the teacher's, and the mean squared difference of the pre-pooling features."""
    device = model_device(student)
    ours, theirs = PrePoolFeatures(student.eval(), with_logits=True), PrePoolFeatures(teacher.eval(), with_logits=True)
    agree, kl, mse = 0, 0.0, 0.0
    for batch in images.split(batch_size):
        batch = batch.to(device)
        (f_s, l_s), (f_t, l_t) = ours(batch), theirs(batch)
        agree += (l_s.argmax(1) == l_t.argmax(1)).sum().item()
        kl += F.kl_div(l_s.float().log_softmax(1), l_t.float().log_softmax(1), log_target=True, reduction='sum').item()
        mse += F.mse_loss(f_s.float(), f_t.float(), reduction='sum').item() / f_s[0].numel()
    n = len(images)
    return {'agreement': 100.0 * agree / n, 'kl': kl / n, 'feature_mse': mse / n}


def choose(dropped: Dict[str, float], finetuned: Dict[str, float], signal: str = 'kl') -> Tuple[str, str]:
    """('finetuned' or 'dropped', why): the finetuned student is kept only when ``signal`` says it is
    closer to the teacher than the dropped one."""
    if signal not in SIGNALS:
        raise ValueError(f"Unknown guard signal '{signal}'; choose from {', '.join(SIGNALS)}.")
    better = SIGNALS[signal] * (finetuned[signal] - dropped[signal]) > 0
    verdict = 'closer to' if better else 'no closer to'
    return ('finetuned' if better else 'dropped',
            f'finetuned student is {verdict} the teacher on the guard images by {signal} '
            f'({finetuned[signal]:.4g} vs {dropped[signal]:.4g} for the dropped student)')
