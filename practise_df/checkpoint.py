"""Compressed-model directories: ``model.safetensors`` + ``config.json``.

The config names the source architecture, the dropped blocks and the data config, so loading rebuilds
the model with no download: build the architecture with random weights, replace the dropped blocks by
identity, load the saved tensors. A folder published on the Hugging Face Hub loads as
``hf-hub:ORG/NAME`` (timm's prefix), fetched once with ``huggingface_hub`` and cached.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, Optional

import torch.nn as nn
from huggingface_hub import snapshot_download
from huggingface_hub.utils import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError
from safetensors.torch import load_file, save_file

from synth.files import apply_umask, check_writable

from .blocks import drop_blocks, dropped_blocks
from .models import HUB_PREFIX, create_model, resolve_data_config

FORMAT = 'practise-df-compressed'
FORMAT_VERSION = 1


def save_compressed(model: nn.Module, path: str, data_config: Optional[Dict[str, Any]] = None,
                    extra: Optional[Dict[str, Any]] = None, overwrite: bool = False) -> str:
    """Write ``model`` (made by :func:`create_model` + :func:`drop_blocks`) to directory ``path``.

    The directory is written under a temporary name and renamed into place, so a crash never leaves
    a half-written model that later loads. An existing directory is only replaced with ``overwrite``.
    """
    source = getattr(model, 'practise_df_source', None)
    if source is None:
        raise ValueError('This model was not built by practise_df.create_model, so its architecture cannot be '
                         'recorded. Build it with create_model(spec, weights=...) before dropping blocks.')
    check_model_dir(path, overwrite)
    config = {
        'format': FORMAT,
        'format_version': FORMAT_VERSION,
        'source': source,
        'dropped_blocks': dropped_blocks(model),
        'data_config': data_config or resolve_data_config(model),  # tuples are written as lists
        **(extra or {}),
    }
    target = os.path.abspath(path)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = target + '.tmp'  # one writer per model: a crash's leftover is replaced by the next save
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        # safetensors refuses shared storage; contiguous clones are what a reload needs anyway.
        state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
        save_file(state, os.path.join(tmp, 'model.safetensors'), metadata={'format': FORMAT})
        apply_umask(os.path.join(tmp, 'model.safetensors'))  # safetensors creates it for its owner only
        with open(os.path.join(tmp, 'config.json'), 'w') as f:
            json.dump(config, f, indent=2)
        old = target + '.old'  # the model being replaced stays whole until the new one is in place
        if os.path.exists(target):
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


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
    if not _is_model_dir(path):
        raise FileExistsError(f"'{path}' is not empty and is not a compressed model written by practise-df, so it "
                              "is never replaced. Choose a new or empty directory; nothing was changed.")
    if not overwrite:
        raise FileExistsError(f"'{path}' already holds a compressed model. Choose another directory or pass "
                              "overwrite=True (--overwrite) to replace it.")


def _is_model_dir(path: str) -> bool:
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
    if not isinstance(config, dict) or config.get('format') != FORMAT:
        raise ValueError(f"'{path}/config.json' is not a practise-df compressed model (format "
                         f"{config.get('format') if isinstance(config, dict) else None!r}).")
    if config.get('format_version', 0) > FORMAT_VERSION:
        raise ValueError(f"'{path}' was written by a newer practise-df (format {config['format_version']}); "
                         "upgrade practise-df to load it.")
    return config


def download_compressed(spec: str) -> str:
    """Local folder of ``hf-hub:ORG/NAME[@REVISION]``: the Hub's files, or the cached copy when offline."""
    repo_id, _, revision = spec[len(HUB_PREFIX):].partition('@')
    try:
        return snapshot_download(repo_id, revision=revision or None,
                                 allow_patterns=['config.json', 'model.safetensors', 'README.md'])
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise FileNotFoundError(f"'{spec}': no such model on the Hugging Face Hub (or it is private: log in with "
                                f"`hf auth login`). {type(e).__name__}") from e
    except LocalEntryNotFoundError as e:
        raise FileNotFoundError(
            f"Cannot fetch '{spec}': this machine is offline (or HF_HUB_OFFLINE=1) and the model is not in the "
            f"Hugging Face cache. On a connected machine run `hf download {repo_id} --local-dir DIR` (or "
            f"load_compressed('{spec}') once there), copy DIR here and pass the folder instead.") from e


def is_compressed_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, 'config.json'))


def load_model(source: str, weights: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """A model from a spec (:func:`practise_df.create_model`, with ``weights``) or a compressed-model
    directory (:func:`load_compressed`, which carries its own weights): what every command's ``--model``
    takes."""
    if is_compressed_dir(source) or source.startswith(HUB_PREFIX):
        if weights not in (None, '', 'random'):
            raise ValueError(f"'{source}' is a compressed-model directory and carries its own weights; "
                             "drop --weights.")
        return load_compressed(source)
    if os.path.isdir(source):
        raise ValueError(f"'{source}' is a directory but holds no config.json, so it is not a compressed model "
                         "written by practise-df. Pass a model spec such as 'timm:resnet50'.")
    return create_model(source, weights, **kwargs)


def load_compressed(path: str) -> nn.Module:
    """Rebuild a model saved by :func:`save_compressed`: a local folder (no download) or ``hf-hub:ORG/NAME``."""
    if path.startswith(HUB_PREFIX):
        path = download_compressed(path)
    config = read_config(path)
    weights = os.path.join(path, 'model.safetensors')
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"'{path}' has a config.json but no model.safetensors; the directory is incomplete.")
    source = config['source']
    model = create_model(source['model'], **source.get('kwargs', {}))
    if config['dropped_blocks']:
        model = drop_blocks(model, config['dropped_blocks'], inplace=True)
    model.load_state_dict(load_file(weights))
    # timm's resolve_model_data_config reads pretrained_cfg, so any code that asks timm (synth included) gets
    # the preprocessing the model was saved with, not its architecture's default
    saved = {k: tuple(v) if isinstance(v, list) else v for k, v in config['data_config'].items()}
    model.pretrained_cfg = {**(getattr(model, 'pretrained_cfg', None) or {}), **saved}
    model.practise_df_source = source
    return model.eval()
