"""Walking the autograd graph of one forward pass (how blocks and adaptor sites are found)."""
from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch


def walk(start, expand: Callable[[object], bool]) -> Iterator[object]:
    """Yield every autograd node reachable from ``start`` towards the inputs, each once.

    A node is yielded before it is expanded; ``expand(node)`` says whether to continue through it.
    """
    stack, seen = [start], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        yield node
        if expand(node):
            stack.extend(n for n, _ in node.next_functions)


def reaches(start, target, expand: Callable[[object], bool]) -> bool:
    """True when ``target`` is met walking back from ``start`` through nodes ``expand`` accepts."""
    return target is not None and any(node is target for node in walk(start, expand))


def trace_input(input_size: Sequence[int], device) -> torch.Tensor:
    """One random image that carries a grad_fn (so a block at the very start is traceable too), drawn from a
    private generator: tracing leaves the global RNG, and so every later stage, as it was."""
    x = torch.randn(1, *input_size, generator=torch.Generator().manual_seed(0))
    return x.to(device).requires_grad_() * 1.0
