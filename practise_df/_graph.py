"""Walking the autograd graph of one forward pass (how blocks and adaptor sites are found)."""
from __future__ import annotations

from typing import Callable, Iterator


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
