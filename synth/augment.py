"""Differentiable augmentations applied to the images at every inversion step.

The teacher must recognise the class and see natural BatchNorm statistics under every view, which keeps
the images from overfitting to one pixel grid (DeepInversion's jitter and flips). kornia ops are
differentiable with respect to the input and draw their parameters from torch's global generator, which
:func:`synth.invert_batch` seeds per batch.
"""
from __future__ import annotations

import kornia
import kornia.augmentation as K
import torch
import torch.nn as nn

from .presets import InversionConfig

__all__ = ['RandomRoll', 'build_augmentation']


class RandomRoll(nn.Module):
    """DeepInversion's jitter: one random circular shift of the whole batch by up to ``max_shift`` pixels."""

    def __init__(self, max_shift: int):
        super().__init__()
        self.max_shift = max_shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.max_shift <= 0:
            return x
        dx, dy = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def build_augmentation(config: InversionConfig, resolution: int, mean=(0.5,) * 3, std=(0.5,) * 3) -> nn.Module:
    """The augmentation of one phase (normalised images in and out): roll jitter, then kornia random
    resized crop, flip and colour jitter as configured. ``mean``/``std`` are the teacher's normalisation,
    needed because colour jitter works on [0, 1] pixels."""
    ops = [RandomRoll(int(round(config.jitter * resolution)))]
    if config.crop_scale is not None:
        ops.append(K.RandomResizedCrop((resolution, resolution), scale=config.crop_scale, resample='bilinear'))
    if config.flip > 0:
        ops.append(K.RandomHorizontalFlip(p=config.flip))
    if config.color_jitter > 0:
        c = config.color_jitter
        mean, std = torch.tensor(mean), torch.tensor(std)  # colour jitter works on [0, 1] pixels
        ops += [kornia.enhance.Denormalize(mean, std), K.ColorJitter(brightness=c, contrast=c, saturation=c, p=0.8),
                kornia.enhance.Normalize(mean, std)]
    return nn.Sequential(*ops)
