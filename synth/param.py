"""How the optimised images are parametrised.

``pixels`` is DeepInversion's: Adam on the pixels themselves. Adam normalises every coordinate's step, so
each update is close to white noise, and early BatchNorm layers (which see high frequencies) keep
disagreeing with natural statistics. ``pyramid`` writes the image as a sum of upsampled levels
(R, R/2, R/4, ... down to 4 px): the same per-coordinate steps then carry roughly equal energy per octave,
like natural images, and coarse structure and colour settle in few steps (the multi-scale
parametrisation of feature-visualisation work).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['PixelImage', 'PyramidImage', 'image_parametrization']


class PixelImage(nn.Module):
    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.pixels = nn.Parameter(init.clone())

    def forward(self) -> torch.Tensor:
        return self.pixels

    @torch.no_grad()
    def project(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Clamp to the valid (normalised) pixel range."""
        self.pixels.copy_(torch.max(torch.min(self.pixels, hi), lo))


class PyramidImage(nn.Module):
    def __init__(self, init: torch.Tensor, min_size: int = 4):
        super().__init__()
        self.size = init.shape[-2:]
        sizes: List[int] = []
        s = min(self.size)
        while s >= min_size:
            sizes.append(s)
            s //= 2
        # The finest level holds the initial image; coarser levels start at zero and learn the low frequencies.
        self.levels = nn.ParameterList([nn.Parameter(init.clone())] + [
            nn.Parameter(init.new_zeros(init.shape[0], init.shape[1], s, s)) for s in sizes[1:]])

    def forward(self) -> torch.Tensor:
        x = self.levels[0]
        for level in self.levels[1:]:
            x = x + F.interpolate(level, size=self.size, mode='bilinear', align_corners=False)
        return x

    @torch.no_grad()
    def project(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Clamp the composed image; the clipped part is taken off the finest level."""
        x = self.forward()
        self.levels[0].add_(torch.max(torch.min(x, hi), lo) - x)


def image_parametrization(kind: str, init: torch.Tensor) -> nn.Module:
    if kind == 'pixels':
        return PixelImage(init)
    if kind == 'pyramid':
        return PyramidImage(init)
    raise ValueError(f"Unknown image parametrisation '{kind}'; use 'pixels' or 'pyramid'.")
