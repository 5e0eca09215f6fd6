"""Label-free measures of a recovered student: how close it is to the teacher, image by image, on images
it was not trained on.

Finetuning on synthesized or out-of-domain images can move a student away from the teacher on real
images while it matches the teacher better on the images it was trained on. So the measure runs on
other images: the run's held-out images, or crops of natural photos (:func:`synth.ood.photo_crops`: by
default the public-domain and CC0 sample photos shipped with scikit-image, so it works offline, or the
user's own).
:func:`closeness` measures a student against the teacher there, image by image; which student compress
keeps is decided from it by :mod:`practise_df.recovery`. ``benchmarks/bench_datafree.py --guard`` and
``benchmarks/bench_recovery_choice.py`` measure how often each rule picks the student with the higher real
top-1 (BENCHMARKS.md).
"""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._distributed import gather, sharded_batches
from .models import PrePoolFeatures, model_device

SIGNALS = {'agreement': +1, 'kl': -1, 'feature_mse': -1}  # +1: higher is closer to the teacher


@torch.no_grad()
def closeness(student: nn.Module, teacher: nn.Module, images: torch.Tensor,
              batch_size: int = 64) -> Dict[str, torch.Tensor]:
    """How close ``student`` is to ``teacher`` on each of ``images``: top-1 agreement (100 or 0), the KL
    divergence of the student's prediction from the teacher's, and the mean squared difference of the
    pre-pooling features; one value per image, for :func:`practise_df.recovery.choose`'s paired test.

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
