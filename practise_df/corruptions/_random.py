"""Random numbers for the corruptions' parameter samplers, drawn from one ``torch.Generator``."""
from __future__ import annotations

import torch
from torch import Tensor

# Numbers are drawn on the generator's device and moved to the images', so a CPU generator also serves CUDA images
# (a generator on the images' device is faster) and gives the CPU's numbers there; None is torch's default generator.


def _source(gen: torch.Generator | None, device: torch.device) -> torch.device:
    return gen.device if gen is not None else device


def _rand(shape, gen, device, dtype=torch.float32) -> Tensor:
    return torch.rand(shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _randn(shape, gen, device, dtype=torch.float32) -> Tensor:
    return torch.randn(shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _randint(low: int, high: int, shape, gen, device, dtype=torch.int64) -> Tensor:
    return torch.randint(low, high, shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _uniform(low: float, high: float, shape, gen, device, dtype=torch.float32) -> Tensor:
    return _rand(shape, gen, device, dtype) * (high - low) + low
