"""Noise corruptions: gaussian, shot (Poisson) and impulse (salt and pepper)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ._filters import _blocks
from ._random import _rand, _randn, _source


def sample_gaussian_noise_params(x: Tensor, severity: int, generator) -> dict:
    return {'noise': _randn(x.shape, generator, x.device, x.dtype)}


def gaussian_noise(x: Tensor, severity: int, noise: Tensor) -> Tensor:
    c = [.08, .12, 0.18, 0.26, 0.38][severity - 1]
    return noise.mul(c).add_(x)


_poisson_tables: dict[tuple, tuple[Tensor, Tensor]] = {}


def _poisson_alias(c: int, device) -> tuple[Tensor, Tensor]:
    """Walker's alias tables (Vose's construction, float64) of Poisson(c * k / 255) for the 8-bit levels k, each
    (256, n): for level k and v uniform in [0, n), column j = floor(v) gives the count j if v < threshold[k, j],
    else j + jump[k, j]."""
    key = (c, str(device))
    if key not in _poisson_tables:
        rates = torch.arange(256, dtype=torch.float64)[:, None] * (c / 255)
        # the tail beyond these counts is below 1e-27 for c <= 60, far below the uniforms' resolution (2^-53)
        counts = torch.arange(int(c + 10 * math.sqrt(c) + 25), dtype=torch.float64)
        pmf = torch.exp(torch.special.xlogy(counts, rates) - rates - torch.lgamma(counts + 1))
        n = len(counts)
        keep, alias = [[1.0] * n for _ in range(256)], [list(range(n)) for _ in range(256)]
        for k, q in enumerate((pmf * n).tolist()):
            small, large = [j for j in range(n) if q[j] < 1], [j for j in range(n) if q[j] >= 1]
            while small and large:
                s, big = small.pop(), large.pop()
                keep[k][s], alias[k][s] = q[s], big
                q[big] -= 1 - q[s]
                (small if q[big] < 1 else large).append(big)
        column = torch.arange(n, dtype=torch.float64)
        _poisson_tables[key] = ((torch.tensor(keep, dtype=torch.float64) + column).to(device),
                                (torch.tensor(alias, dtype=torch.float64) - column).to(device))
    return _poisson_tables[key]


def _on_8bit_grid(x: Tensor) -> bool:
    """Whether every value is a level k / 255, k in 0..255 (up to float rounding), as in the reference's images."""
    def offset(b: Tensor) -> Tensor:  # from the nearest level, per image; values outside [0, 1] are off too
        scaled = b * 255
        return scaled.sub_(scaled.clamp(0, 255).round_()).abs_().flatten(1).amax(1)
    return bool(_blocks(offset, x).max() < 1e-4)


def _poisson_8bit(x: Tensor, c: int, gen) -> Tensor:
    """Poisson(c * x) for x on the 8-bit grid, exact in distribution: one float64 uniform per value through the alias
    tables of its level. 3-4x faster than torch.poisson on a CPU thread."""
    threshold, jump = _poisson_alias(c, x.device)
    n = threshold.shape[1]
    out = torch.empty_like(x)
    # image by image, uniforms too: the float64 temporaries stay in cache (whole batches are ~1.7x slower)
    for i, b in enumerate(x):
        # uniforms are at most 1 - 2^-53, and then u * n rounds below n: floor(v) is a column of the row
        v = _rand(b.shape, gen, x.device, torch.float64).mul_(n)
        j = v.floor()
        index = b.mul(255).round_().mul_(n).add(j).long()
        out[i] = j.addcmul_(v.ge_(torch.take(threshold, index)), torch.take(jump, index))
    return out


_SHOT = [60, 25, 12, 5, 3]


def sample_shot_noise_params(x: Tensor, severity: int, generator) -> dict:
    """The Poisson counts of rate c * x: the one parameter that depends on the pixel values, not only on the shape
    (torch.poisson draws a variable amount of numbers per value)."""
    c = _SHOT[severity - 1]
    # The reference's images are uint8, so its rates are c * k / 255: numbers drawn on the CPU for such images go
    # through tables, as torch.poisson is slow there. Other devices and values off the 8-bit grid keep torch.poisson.
    if _source(generator, x.device).type == 'cpu' and _on_8bit_grid(x):
        return {'counts': _poisson_8bit(x, c, generator)}
    rates = (x * c).to(_source(generator, x.device))
    return {'counts': torch.poisson(rates, generator=generator).to(x.device)}


def shot_noise(x: Tensor, severity: int, counts: Tensor) -> Tensor:
    return counts / _SHOT[severity - 1]


def sample_impulse_noise_params(x: Tensor, severity: int, generator) -> dict:
    return {'uniform': _rand(x.shape, generator, x.device, x.dtype)}


def impulse_noise(x: Tensor, severity: int, uniform: Tensor) -> Tensor:
    c = [.03, .06, .09, 0.17, 0.27][severity - 1]
    # skimage.util.random_noise(mode='s&p', salt_vs_pepper=0.5): each value independently flipped with
    # probability c, to salt or pepper with equal odds; one uniform draw decides both
    return torch.where(uniform < c, (uniform < c / 2).to(x.dtype), x)
