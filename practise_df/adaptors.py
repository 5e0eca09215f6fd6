"""Identity-initialised linear adaptors around dropped blocks, and their exact folding.

PRACTISE recovers a dropped block by training 1x1 adaptors on the convs that write to and read from
the residual stream the block sat on (official code: after the last conv of every earlier block of
the stage and the shortcut conv; before the first conv of every later block and of the next stage).
We find those convs generically on the autograd graph of one forward pass:

- writers: walking back from the stream at the dropped position through any op, the first
  Conv2d/Linear met on each path whose output has the stream's size;
- readers: a Conv2d/Linear whose input, walked back the same way, reaches that stream.

An adaptor is a bias-free channel-mixing matrix A (post-adaptors keep the layer's bias). Because it
is linear and sits directly on a conv/linear, it folds exactly: conv(A x) and A conv(x) are convs.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch
import torch.nn as nn

from ._graph import reaches, trace_input, walk
from .models import PrePoolFeatures, model_device

_LAYERS = (nn.Conv2d, nn.Linear)


def _foldable(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Linear) or (isinstance(layer, nn.Conv2d) and layer.groups == 1)


def _channels(layer: nn.Module, side: str) -> int:
    return layer.weight.shape[1 if side == 'in' else 0]  # (out, in[, kh, kw]); 'in' only where groups == 1


def _identity_adaptor(layer: nn.Module, side: str) -> nn.Module:
    c = _channels(layer, side)
    bias = side == 'out' and layer.bias is not None
    adaptor = nn.Linear(c, c, bias=bias) if isinstance(layer, nn.Linear) else nn.Conv2d(c, c, 1, bias=bias)
    with torch.no_grad():
        adaptor.weight.copy_(torch.eye(c).view_as(adaptor.weight))
        if bias:
            adaptor.bias.zero_()
    return adaptor.to(device=layer.weight.device, dtype=layer.weight.dtype)


class Adapted(nn.Module):
    """``post(layer(pre(x)))`` with identity-initialised 1x1 adaptors; :meth:`fold` returns ``layer``
    with the adaptors merged into its weights."""

    def __init__(self, layer: nn.Module, pre: bool, post: bool):
        super().__init__()
        self.layer = layer
        self.pre = _identity_adaptor(layer, 'in') if pre else None
        self.post = _identity_adaptor(layer, 'out') if post else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre is not None:
            x = self.pre(x)
        x = self.layer(x)
        if self.post is not None:
            x = self.post(x)
        return x

    @torch.no_grad()
    def fold(self) -> nn.Module:
        layer = self.layer
        w = layer.weight
        if self.pre is not None:
            a = self.pre.weight.flatten(1)  # (I, I)
            w = torch.einsum('oj...,ji->oi...', w, a)
        if self.post is not None:
            a = self.post.weight.flatten(1)  # (O, O)
            w = torch.einsum('po,o...->p...', a, w)
            if layer.bias is not None:
                layer.bias.copy_(a @ layer.bias + self.post.bias)
        layer.weight.copy_(w)
        return layer


def find_adaptor_sites(model: nn.Module, dropped: Iterable[str],
                       input_size) -> Dict[str, Tuple[bool, bool]]:
    """{layer name: (pre, post)} for the adaptors around the dropped blocks.

    ``model`` must already have the blocks replaced by identity (see :func:`drop_blocks`).
    """
    dropped = list(dropped)
    streams: Dict[str, torch.Tensor] = {}
    layer_in: Dict[str, torch.Tensor] = {}
    layer_out: Dict[str, torch.Tensor] = {}
    handles = []
    for name in dropped:
        module = model.get_submodule(name)
        handles.append(module.register_forward_hook(_recorder(streams, None, name)))
    for name, module in model.named_modules():
        if isinstance(module, _LAYERS):
            handles.append(module.register_forward_hook(_recorder(layer_out, layer_in, name)))
    try:
        x = trace_input(input_size, model_device(model))
        with torch.enable_grad():
            features = PrePoolFeatures(model.eval())(x)
    finally:
        for h in handles:
            h.remove()

    node_to_layer = {t.grad_fn: n for n, t in layer_out.items() if t.grad_fn is not None}
    upstream_of_features = set(walk(features.grad_fn, lambda n: True))
    sites: Dict[str, List[bool]] = {}
    for name in dropped:
        stream = streams[name]
        # writers: first layer met on every path back from the stream
        for layer_name in _first_layers(stream.grad_fn, node_to_layer):
            layer = model.get_submodule(layer_name)
            out = layer_out[layer_name]
            if (_foldable(layer) and out.numel() == stream.numel()
                    and _channels(layer, 'out') in (stream.shape[1], stream.shape[-1])):
                sites.setdefault(layer_name, [False, False])[1] = True
        # readers: layers whose input leads back to the stream without crossing another layer
        for layer_name, inp in layer_in.items():
            layer = model.get_submodule(layer_name)
            if (_foldable(layer) and layer_out[layer_name].grad_fn in upstream_of_features
                    and _reaches_without_layer(inp, stream, node_to_layer)):
                sites.setdefault(layer_name, [False, False])[0] = True
    return {k: (v[0], v[1]) for k, v in sites.items()}


def _recorder(outputs: dict, inputs, name: str):
    def hook(module, args, output):  # returns None: a forward hook's return value replaces the output
        outputs[name] = output
        if inputs is not None:
            inputs[name] = args[0]
    return hook


def _first_layers(start, node_to_layer) -> List[str]:
    """Layers met first on every path back from ``start`` (the walk stops at each layer)."""
    return [node_to_layer[n] for n in walk(start, lambda n: n not in node_to_layer) if n in node_to_layer]


def _reaches_without_layer(inp: torch.Tensor, stream: torch.Tensor, node_to_layer) -> bool:
    return inp is stream or reaches(inp.grad_fn, stream.grad_fn, lambda n: n not in node_to_layer)


def insert_adaptors(model: nn.Module, dropped: Iterable[str], input_size) -> List[nn.Parameter]:
    """Wrap the writers/readers of the dropped blocks' streams in :class:`Adapted`, in place.

    Returns the adaptor parameters (the only ones PRACTISE trains to measure recoverability).
    """
    params = []
    for name, (pre, post) in find_adaptor_sites(model, dropped, input_size).items():
        wrapped = Adapted(model.get_submodule(name), pre, post)
        model.set_submodule(name, wrapped)
        params += [p for adaptor in (wrapped.pre, wrapped.post) if adaptor is not None for p in adaptor.parameters()]
    return params


def fold_adaptors(model: nn.Module) -> nn.Module:
    """Merge every :class:`Adapted` back into its layer, in place; the model's structure and state-dict
    keys are then those it had before :func:`insert_adaptors`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, Adapted):
            model.set_submodule(name, module.fold())
    return model
