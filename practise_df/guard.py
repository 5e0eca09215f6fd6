"""A label-free check of a recovery: is the finetuned student closer to the teacher than the plainly
dropped one, on natural photos that neither was trained on?

Finetuning on synthesized or out-of-domain images can move a student away from the teacher on real
images while it matches the teacher better on the images it was trained on. So the check runs on
other images: crops of natural photos (:func:`synth.ood.photo_crops`: by default the public-domain and
CC0 sample photos shipped with scikit-image, so it works offline, or the user's own). :func:`closeness`
measures both students against the teacher there, crop by crop; :func:`choose` keeps the finetuned one only when
the signal says it is closer by more than the noise of the paired per-crop differences.
``benchmarks/bench_datafree.py --guard`` measures how often each rule picks the student with the higher
real top-1 (BENCHMARKS.md: on tf_efficientnet_lite0 no rule is reliable enough to trust blindly).
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._distributed import gather, sharded_batches
from .models import PrePoolFeatures, model_device

SIGNALS = {'agreement': +1, 'kl': -1, 'feature_mse': -1}  # +1: higher is closer to the teacher
# The finetuned student must beat the dropped one by this many standard errors of the per-crop differences.
# Crops of a few photos are not independent samples, so this is a floor on the noise, not a significance test.
MIN_Z = 2.0


@torch.no_grad()
def closeness(student: nn.Module, teacher: nn.Module, images: torch.Tensor,
              batch_size: int = 64) -> Dict[str, torch.Tensor]:
    """How close ``student`` is to ``teacher`` on each of ``images``: top-1 agreement (100 or 0), the KL
    divergence of the student's prediction from the teacher's, and the mean squared difference of the
    pre-pooling features; one value per image, for :func:`choose`'s paired test.

    Under ``accelerate launch`` the batches are split over the processes and the values gathered in the
    images' order, on every process."""
    device = model_device(student)
    ours, theirs = PrePoolFeatures(student.eval(), with_logits=True), PrePoolFeatures(teacher.eval(), with_logits=True)
    mine = []
    for i, _, (batch,) in sharded_batches([(b,) for b in images.split(batch_size)]):
        batch = batch.to(device)
        (f_s, l_s), (f_t, l_t) = ours(batch), theirs(batch)
        kl = F.kl_div(l_s.float().log_softmax(1), l_t.float().log_softmax(1), log_target=True, reduction='none')
        mine.append((i, {'agreement': 100.0 * (l_s.argmax(1) == l_t.argmax(1)).float().cpu(), 'kl': kl.sum(1).cpu(),
                         'feature_mse': (f_s.float() - f_t.float()).pow(2).flatten(1).mean(1).cpu()}))
    batches = [values for _, values in sorted(gather(mine), key=lambda item: item[0])]
    return {signal: torch.cat([values[signal] for values in batches]) for signal in SIGNALS}


def compare(student: nn.Module, teacher: nn.Module, images: torch.Tensor, batch_size: int = 64) -> Dict[str, float]:
    """The means of :func:`closeness`: top-1 agreement (%), mean KL divergence and mean feature MSE."""
    return {signal: v.mean().item() for signal, v in closeness(student, teacher, images, batch_size).items()}


def choose(dropped: Dict[str, torch.Tensor], finetuned: Dict[str, torch.Tensor], signal: str = 'kl',
           min_z: float = MIN_Z) -> Tuple[str, str]:
    """('finetuned' or 'dropped', why): the finetuned student is kept only when it is closer to the teacher by
    ``signal`` on the same images (per-image values from :func:`closeness`), by more than ``min_z`` standard
    errors of the paired differences. Ties and differences within the noise keep the dropped student, which
    is the teacher's own weights and costs nothing to trust."""
    if signal not in SIGNALS:
        raise ValueError(f"Unknown guard signal '{signal}'; choose from {', '.join(SIGNALS)}.")
    gain = SIGNALS[signal] * (finetuned[signal].double() - dropped[signal].double())  # > 0: finetuned closer
    n = gain.numel()
    se = gain.std().item() / n ** 0.5 if n > 1 else float('inf')
    mean = gain.mean().item()
    z = mean / se if se > 0 else (0.0 if mean == 0 else math.copysign(math.inf, mean))  # no spread: the sign
    better = z > min_z
    verdict = 'closer to' if better else 'not clearly closer to'
    return ('finetuned' if better else 'dropped',
            f'finetuned student is {verdict} the teacher on the guard images by {signal} '
            f'({finetuned[signal].mean().item():.4g} vs {dropped[signal].mean().item():.4g} for the dropped student; '
            f'paired z = {z:.2f} over {n} crops, {min_z:g} needed)')
