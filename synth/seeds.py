"""One way to derive independent, reproducible seeds from several integers."""
from __future__ import annotations

import numpy as np

__all__ = ['mix_seed']


def mix_seed(*parts: int) -> int:
    """A 32-bit seed from ``parts`` (numpy's SeedSequence mixing): the same parts give the same seed in every
    process and run (unlike ``hash``), and nearby parts (seed 0 and 1, batch 3 and 4) give unrelated ones."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])
