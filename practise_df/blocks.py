"""Find the blocks PRACTISE may drop, and drop them.

A module is a *candidate* when replacing it by identity keeps every shape and it sits on a residual
path: its output is its input plus a branch. We read this off the autograd graph of one forward pass
instead of a table of model names: walking back from the block's output through additions and
activations (the ops a skip connection passes through) must reach the block's input. Downsampling
shortcuts (a conv or pool on the skip) and blocks without a skip never reach it. The innermost such
module is the block (a stage made only of residual blocks is not itself a candidate).
"""
from __future__ import annotations

import copy
from typing import Iterable, List, Optional, Sequence

import torch
import torch.nn as nn

from ._graph import reaches, trace_input
from .models import model_device, resolve_data_config

# Autograd nodes a skip connection may pass through: the add itself and the activation some
# architectures apply after it (ResNet's ReLU), plus shape-free views.
_SKIP_PATH_NODES = (
    'AddBackward', 'ReluBackward', 'ThresholdBackward', 'HardtanhBackward', 'GeluBackward', 'SiluBackward',
    'HardswishBackward', 'CloneBackward', 'ViewBackward', 'AliasBackward', 'ReshapeAliasBackward',
)


def _passes_skip(node) -> bool:
    return type(node).__name__.rstrip('0123456789') in _SKIP_PATH_NODES


def residual_modules(model: nn.Module, input_size: Sequence[int]) -> List[str]:
    """One forward pass with autograd on; returns the non-leaf modules called with a single tensor whose
    output has the input's shape and depends on it through a path other than the skip (residual blocks)."""
    found: List[str] = []

    def record(name):
        def hook(module, args, output):
            x = args[0] if len(args) == 1 else None
            if isinstance(x, torch.Tensor) and isinstance(output, torch.Tensor) and output.shape == x.shape \
                    and output is not x and reaches(output.grad_fn, x.grad_fn, expand=_passes_skip):
                found.append(name)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n and any(m.children())]
    was_training = model.training
    model.eval()
    try:
        x = trace_input(input_size, model_device(model))
        with torch.enable_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return list(dict.fromkeys(found))  # a module called twice counts once


def find_blocks(model: nn.Module, input_size: Optional[Sequence[int]] = None) -> List[str]:
    """Names of the droppable residual blocks of ``model``, in forward order.

    Args:
        model: a timm or torchvision model (any ``nn.Module`` whose residual blocks are modules).
        input_size: (C, H, W) used for the tracing pass; defaults to the model's data config.
    """
    if input_size is None:
        input_size = resolve_data_config(model)['input_size']
    residual = residual_modules(model, input_size)
    # Keep the innermost: drop any candidate that contains another candidate.
    blocks = [n for n in residual if not any(o != n and o.startswith(n + '.') for o in residual)]
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(blocks, key=order.__getitem__)


def check_blocks(model: nn.Module, names: Iterable[str], candidates: Optional[List[str]] = None) -> List[str]:
    """Validate block names against the candidates; raises a ValueError that lists the valid ones."""
    names = list(dict.fromkeys(names))
    candidates = find_blocks(model) if candidates is None else candidates
    bad = [n for n in names if n not in candidates]
    if bad:
        raise ValueError(f"Not droppable: {', '.join(bad)}. Candidate blocks of this model are: "
                         f"{', '.join(candidates) or '(none)'}. See `practise-df blocks --model ...`.")
    return names


def drop_blocks(model: nn.Module, names: Iterable[str], inplace: bool = False,
                candidates: Optional[List[str]] = None) -> nn.Module:
    """Replace the named blocks by ``nn.Identity``. The result is the same class as ``model``.

    ``names`` are checked against :func:`find_blocks` unless ``candidates`` is given.
    """
    names = check_blocks(model, names, candidates)
    if not inplace:
        model = copy.deepcopy(model)
    for name in names:
        model.set_submodule(name, nn.Identity())
    model.practise_df_dropped = dropped_blocks(model) + names
    return model


def dropped_blocks(model: nn.Module) -> List[str]:
    """Blocks dropped from ``model`` by :func:`drop_blocks` (empty for an untouched model)."""
    return list(getattr(model, 'practise_df_dropped', []))
