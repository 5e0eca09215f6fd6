"""Compressed-model directories: ``model.safetensors`` + ``config.json``.

The config names the source architecture (a registry name or a ``py:`` factory, with its constructor
arguments), the dropped blocks and the data config, so loading rebuilds the model with no download: build
the architecture with random weights, replace the dropped blocks by identity, load the saved tensors.
Saving rebuilds it the same way and compares outputs first, so a model that would load as another network
is refused. A folder published on the Hugging Face Hub loads as ``hf-hub:ORG/NAME`` (timm's prefix),
fetched once with ``huggingface_hub`` and cached.

What rebuilds a model is one object, :class:`Provenance`, that the pipeline hands from stage to stage and
:func:`save_compressed` writes (its fields are the config's ``source``, ``dropped_blocks`` and ``data_config``
keys, as every version of the format wrote them); :func:`read_provenance` reads it back. Given explicitly,
nothing is read off the module, so a wrapped or re-built model saves the same.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field, replace
from typing import Any, Dict, Iterable, Optional, Tuple

import timm
import torch
import torch.nn as nn
from huggingface_hub import hf_hub_download, snapshot_download
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from practise_io import apply_umask, check_writable, temporary_name

from .blocks import drop_blocks, dropped_blocks
from .models import HUB_PREFIX, PY_PREFIX, create_model, hub_errors, model_device, resolve_data_config

FORMAT = 'practise-df-compressed'
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Provenance:
    """Where a model comes from: what builds its architecture (``source``: a :func:`create_model` spec or
    ``py:`` factory and its constructor arguments), the blocks dropped from it and the preprocessing it
    expects. Saved in a compressed model's ``config.json`` and read back by :func:`load_compressed`."""
    source: Dict[str, Any]  # {'model': spec or py: factory, 'kwargs': constructor arguments}
    dropped_blocks: Tuple[str, ...] = ()
    data_config: Dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: nn.Module, data_config: Optional[Dict[str, Any]] = None) -> 'Provenance':
        """The provenance of a model made by :func:`create_model` (+ :func:`drop_blocks`), by
        :func:`load_compressed` or by ``timm.create_model``, from what those record on it."""
        return cls(model_source(model), tuple(dropped_blocks(model)),
                   dict(data_config or resolve_data_config(model)))

    @classmethod
    def from_dict(cls, config: Dict[str, Any]) -> 'Provenance':
        """From a compressed model's ``config.json`` (any format version: the keys never changed)."""
        return cls(dict(config['source']), tuple(config.get('dropped_blocks') or ()),
                   dict(config.get('data_config') or {}))

    def to_dict(self) -> Dict[str, Any]:
        return {'source': self.source, 'dropped_blocks': list(self.dropped_blocks),
                'data_config': dict(self.data_config)}

    def dropping(self, blocks: Iterable[str]) -> 'Provenance':
        """This provenance with ``blocks`` dropped too."""
        return replace(self, dropped_blocks=(*self.dropped_blocks, *blocks))

    def describe(self) -> str:
        return self.source['model'] + (f" without {', '.join(self.dropped_blocks)}" if self.dropped_blocks else '')

    def build(self, state: Optional[Dict[str, torch.Tensor]] = None) -> nn.Module:
        """The architecture (with ``state`` loaded when given), in eval mode."""
        model = create_model(self.source['model'], **self.source.get('kwargs', {}))
        if self.dropped_blocks:
            model = drop_blocks(model, self.dropped_blocks, inplace=True)
        if state is not None:
            model.load_state_dict(state)
        # timm's resolve_model_data_config reads pretrained_cfg (timm's own record of the preprocessing), so
        # any code that asks timm (synth included) gets the preprocessing the model was saved with
        saved = {k: tuple(v) if isinstance(v, list) else v for k, v in self.data_config.items()}
        model.pretrained_cfg = {**(getattr(model, 'pretrained_cfg', None) or {}), **saved}
        model.practise_df_source = self.source  # what Provenance.of reads, for a later save without provenance
        return model.eval()


def save_compressed(model: nn.Module, path: str, data_config: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None, overwrite: bool = False,
                    provenance: Optional[Provenance] = None) -> str:
    """Write ``model`` and its :class:`Provenance` to directory ``path``.

    ``provenance``: what rebuilds ``model``; default :meth:`Provenance.of` (``model`` made by
    :func:`create_model` + :func:`drop_blocks`, or loaded by :func:`load_compressed`), with ``data_config``.

    Before anything is written the model is rebuilt from what would be saved and its outputs compared with
    ``model``'s (:func:`check_rebuilds`): a model that would load as another network is refused. The
    directory is written under a temporary name and renamed into place, so a crash never leaves a
    half-written model that later loads. An existing directory is only replaced with ``overwrite``.
    """
    check_model_dir(path, overwrite)
    if provenance is None:
        provenance = Provenance.of(model, data_config)
    elif data_config is not None:
        provenance = replace(provenance, data_config=dict(data_config))
    config = {'format': FORMAT, 'format_version': FORMAT_VERSION, **provenance.to_dict(), **(extra or {})}
    try:
        text = json.dumps(config, indent=2)  # tuples are written as lists
    except TypeError as e:
        raise ValueError(f'The model arguments {config["source"]["kwargs"]!r} cannot be written to config.json '
                         f'({e}): pass JSON values (numbers, strings, lists, dicts).') from None
    # safetensors refuses shared storage; contiguous clones are what a reload needs anyway.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    check_rebuilds(model, provenance, state)
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = temporary_name(target, directory=True)  # a name of this save alone: nothing of the user's is touched
    old = None
    try:
        _save_tensors(state, os.path.join(tmp, 'model.safetensors'))
        with open(os.path.join(tmp, 'config.json'), 'w') as f:
            f.write(text)
        if os.path.exists(target):  # the model being replaced stays whole until the new one is in place
            old = temporary_name(target, 'old', directory=True)
            os.replace(target, old)  # onto the empty folder just made
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not os.path.exists(target):
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


REBUILD_FIX = ("Likely cause: a module replaced after the model was built (e.g. model.maxpool = nn.Identity()), "
               "or constructor arguments that were not recorded. Fix: write a function that builds the network as "
               "you use it and pass it as --model py:FILE.py:FUNCTION (create_model('py:FILE.py:FUNCTION') in "
               "Python).")


def model_source(model: nn.Module) -> Dict[str, Any]:
    """What rebuilds ``model``'s architecture: the source :func:`create_model` recorded, or for a model made
    by ``timm.create_model`` its architecture and class count (checked by :func:`check_rebuilds`)."""
    source = getattr(model, 'practise_df_source', None)
    if source is not None:
        return source
    architecture = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    if architecture and timm.is_model(architecture):
        return {'model': f'timm:{architecture}', 'kwargs': {'num_classes': model.num_classes}}
    raise ValueError(f'This {type(model).__name__} was not built by practise_df.create_model, so how to rebuild it '
                     "cannot be recorded. Build it with create_model('timm:NAME' or 'torchvision:NAME'), or for "
                     "your own network with create_model('py:FILE.py:FUNCTION'), a function that returns it.")


def check_rebuilds(model: nn.Module, provenance: Provenance, state: Dict[str, torch.Tensor]) -> None:
    """Raise a ValueError unless rebuilding ``provenance`` (what :func:`load_compressed` does) with ``state``
    gives ``model``'s outputs on a fixed random input (eval mode, the data config's input size)."""
    described = provenance.describe()
    try:
        rebuilt = provenance.build(state)
    except RuntimeError as e:  # load_state_dict: keys or shapes differ
        raise ValueError(f'Refused to save: rebuilding {described} does not give this model: '
                         f"{' '.join(str(e).split())[:300]}. {REBUILD_FIX} "
                         'Nothing was written.') from None
    device, dtype = model_device(model), next(model.parameters(), torch.empty(0)).dtype
    x = torch.randn(2, *provenance.data_config['input_size'], generator=torch.Generator().manual_seed(0))
    was_training = model.training
    try:
        with torch.no_grad():
            expected = _logits(model.eval()(x.to(device, dtype)))
            got = _logits(rebuilt.to(device, dtype)(x.to(device, dtype)))
    finally:
        model.train(was_training)
    diff = (got - expected).abs().max().item() if got.shape == expected.shape else float('inf')
    if not diff <= 1e-3 * (1 + expected.abs().max().item()):
        raise ValueError(f'Refused to save: rebuilding {described} from what would be saved gives other outputs '
                         f'than this model (max |difference| {diff:.3g} on a random input), so it would load as '
                         f'another network. {REBUILD_FIX} Nothing was written.')


def _logits(output) -> torch.Tensor:
    """The first tensor of a model's output (a tensor, or a tuple/list/dict holding tensors), on the CPU."""
    while not isinstance(output, torch.Tensor):
        output = next(iter(output.values() if isinstance(output, dict) else output))
    return output.float().cpu()


def check_rebuildable(model: nn.Module, data_config: Optional[Dict[str, Any]] = None) -> Provenance:
    """Before long work on ``model``: raise what :func:`save_compressed` would (no record of how to build
    it, or a rebuild that is another network); else return its :class:`Provenance`."""
    provenance = Provenance.of(model, data_config)
    check_rebuilds(model, provenance, model.state_dict())
    return provenance


def _save_tensors(state: Dict[str, Any], path: str) -> None:
    """``safetensors.save_file``, with a full disk reported as one (``OSError(ENOSPC)``, as Python's own
    writes) and a file written short refused before it replaces anything."""
    try:
        save_file(state, path, metadata={'format': FORMAT})
    except SafetensorError as e:
        full = any(s in str(e) for s in ('os error 28', 'StorageFull', 'No space left'))
        raise OSError(errno.ENOSPC if full else errno.EIO, f'cannot write the model ({e})', path) from None
    apply_umask(path)  # safetensors creates it for its owner only
    with open(path, 'rb') as f:  # a write that failed silently leaves a file shorter than its header says
        length = int.from_bytes(f.read(8), 'little')
        header = f.read(length)
    try:
        ends = [v['data_offsets'][1] for k, v in json.loads(header).items() if k != '__metadata__']
    except (ValueError, KeyError, TypeError):
        ends = None
    if ends is None or os.path.getsize(path) < 8 + length + max(ends, default=0):
        raise OSError(errno.ENOSPC, 'the model file was written short (no space left on the disk?)', path)


def check_model_dir(path: str, overwrite: bool = False) -> None:
    """Before any work: ``path`` is new, an empty directory, or (with ``overwrite``) a compressed model to
    replace. Anything else (a file, a folder of the user's) is refused and left as it is."""
    check_writable(path, 'model directory')  # written beside it under a temporary name, then renamed
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise FileExistsError(f"'{path}' is a file; a compressed model is a directory. Choose another path.")
    if not os.listdir(path):
        return
    if not is_saved_model(path):
        raise FileExistsError(f"'{path}' is not empty and is not a compressed model written by practise-df, so it "
                              "is never replaced. Choose a new or empty directory; nothing was changed.")
    if not overwrite:
        raise FileExistsError(f"'{path}' already holds a compressed model. Choose another directory or pass "
                              "overwrite=True (--overwrite) to replace it.")


def is_saved_model(path: str) -> bool:
    """``path`` holds a compressed model written by :func:`save_compressed` and nothing else."""
    try:
        return read_config(path) is not None and set(os.listdir(path)) <= {'config.json', 'model.safetensors',
                                                                            'README.md'}
    except (OSError, ValueError):
        return False


def read_config(path: str) -> Dict[str, Any]:
    with open(os.path.join(path, 'config.json')) as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}/config.json' is not valid JSON ({e}).") from None
    if isinstance(config, dict) and 'architecture' in config and 'format' not in config:
        raise ValueError(f"'{path}' is a timm model folder, not a practise-df compressed model: pass it as "
                         f"local-dir:{path}.")
    if not isinstance(config, dict) or config.get('format') != FORMAT:
        raise ValueError(f"'{path}/config.json' is not a practise-df compressed model (format "
                         f"{config.get('format') if isinstance(config, dict) else None!r}).")
    if config.get('format_version', 0) > FORMAT_VERSION:
        raise ValueError(f"'{path}' was written by a newer practise-df (format {config['format_version']}); "
                         "upgrade practise-df to load it.")
    return config


def read_provenance(path: str) -> Provenance:
    """The :class:`Provenance` saved in compressed-model folder ``path``."""
    return Provenance.from_dict(read_config(path))


def download_compressed(spec: str) -> str:
    """Local folder of ``hf-hub:ORG/NAME[@REVISION]``: the Hub's files, or the cached copy when offline."""
    repo_id, _, revision = spec[len(HUB_PREFIX):].partition('@')
    with hub_errors(spec):
        return snapshot_download(repo_id, revision=revision or None,
                                 allow_patterns=['config.json', 'model.safetensors', 'README.md'])


def _is_compressed_on_hub(spec: str) -> bool:
    """Whether ``hf-hub:ORG/NAME`` is a compressed model (its config.json's format), not a timm model."""
    repo_id, _, revision = spec[len(HUB_PREFIX):].partition('@')
    with hub_errors(spec):
        config_file = hf_hub_download(repo_id, 'config.json', revision=revision or None)
    try:
        with open(config_file) as f:
            return json.load(f).get('format') == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def is_compressed_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, 'config.json'))


def load_model(source: str, weights: Optional[str] = None, *, seed: Optional[int] = None, **kwargs: Any
               ) -> nn.Module:
    """A model from a spec (:func:`practise_df.create_model`, with ``weights`` and constructor ``kwargs``; random
    weights drawn from ``seed``) or a compressed-model directory (:func:`load_compressed`, which carries its own
    weights and architecture): what every command's ``--model`` takes. ``hf-hub:ORG/NAME`` is either, told apart
    by its config.json."""
    if is_compressed_dir(source) or (source.startswith(HUB_PREFIX) and _is_compressed_on_hub(source)):
        if weights not in (None, '', 'random'):
            raise ValueError(f"'{source}' is a compressed-model directory and carries its own weights; "
                             "drop --weights.")
        if kwargs:
            raise ValueError(f"'{source}' is a compressed-model directory and carries its own architecture; drop "
                             f"the model arguments ({', '.join(kwargs)}: --num-classes / --model-kwargs).")
        return load_compressed(source)
    if ':' not in source and (os.sep in source or source.startswith('.')) and not os.path.exists(source):
        raise FileNotFoundError(f"'{source}' does not exist. A compressed-model directory must be an existing folder; "
                                "a model name holds no '/' (e.g. timm:resnet50).")
    if os.path.isdir(source):
        raise ValueError(f"'{source}' is a directory but holds no config.json, so it is not a compressed model "
                         "written by practise-df. Pass a model spec such as 'timm:resnet50'.")
    return create_model(source, weights, seed=seed, **kwargs)


def load_compressed(path: str) -> nn.Module:
    """Rebuild a model saved by :func:`save_compressed`: a local folder (no download) or ``hf-hub:ORG/NAME``."""
    if path.startswith(HUB_PREFIX):
        path = download_compressed(path)
    config = read_config(path)
    weights = os.path.join(path, 'model.safetensors')
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"'{path}' has a config.json but no model.safetensors; the directory is incomplete.")
    try:
        tensors = load_file(weights)
    except SafetensorError as e:
        raise ValueError(f"'{weights}' cannot be read ({e}): the compressed model is damaged, e.g. a copy cut "
                         'short. Copy or save it again.') from None
    provenance = Provenance.from_dict(config)
    factory = provenance.source['model']
    try:
        return provenance.build(tensors)
    except (ImportError, FileNotFoundError) as e:
        if not factory.startswith(PY_PREFIX):
            raise
        raise type(e)(f"'{path}' holds a network built by the function {factory}, which cannot be loaded here: "
                      f"{e}") from e
