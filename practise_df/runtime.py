"""ONNX Runtime sessions behind a torch module, so an exported graph is timed and evaluated like any
student (``measure_latencies``, ``evaluate``).

onnx, onnxscript and onnxruntime are the optional extra ``practise-df[deploy]``. The CPU execution
provider is always there; the CUDA provider comes with the ``onnxruntime-gpu`` package.
"""
from __future__ import annotations

import importlib
from typing import List, Optional, Union

import torch
import torch.nn as nn

DEPLOY_EXTRA = "pip install 'practise-df[deploy]'"


def require_deploy(name: str, purpose: str = 'ONNX export and ONNX Runtime latency'):
    """Import an optional package of the ``deploy`` extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{purpose} needs the '{name}' package: {DEPLOY_EXTRA} "
                          "(installs onnx, onnxscript and onnxruntime).") from e


def providers_for(device: str) -> List[Union[str, tuple]]:
    """ONNX Runtime execution providers for a torch device string: CPU, or CUDA with CPU as fallback."""
    ort = require_deploy('onnxruntime')
    dev = torch.device(device)
    if dev.type == 'cpu':
        return ['CPUExecutionProvider']
    if dev.type == 'cuda':
        available = ort.get_available_providers()
        if 'CUDAExecutionProvider' not in available:
            raise ValueError(f"This onnxruntime has no CUDAExecutionProvider (it has {', '.join(available)}). "
                             "Install onnxruntime-gpu in place of onnxruntime, or use --device cpu.")
        return [('CUDAExecutionProvider', {'device_id': dev.index or 0}), 'CPUExecutionProvider']
    raise ValueError(f"ONNX Runtime runs here on 'cpu' or 'cuda', not '{device}'.")


def provider_name(device: str) -> str:
    """Name of the execution provider :func:`providers_for` puts first."""
    first = providers_for(device)[0]
    return first[0] if isinstance(first, tuple) else first


class OnnxRuntimeModel(nn.Module):
    """An ONNX file in an ``InferenceSession``, called like the model it was exported from: one batch
    of images in, logits out (on the input's device). Inputs are copied to host memory for ONNX
    Runtime, so on CUDA the time of a call includes the copies both ways.

    Args:
        path: the ``.onnx`` file (its first input takes the images, its first output is returned).
        device: 'cpu' (CPU execution provider) or 'cuda[:i]' (CUDA provider, needs onnxruntime-gpu).
        threads: intra-op threads of the session; default torch's thread count, so both runtimes
            get the same share of the machine.
    """

    def __init__(self, path: str, device: str = 'cpu', threads: Optional[int] = None):
        super().__init__()
        ort = require_deploy('onnxruntime')
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only: fallbacks to the CPU provider are not news
        providers = providers_for(device)
        try:
            self.session = ort.InferenceSession(path, options, providers=providers)
        except Exception as e:  # onnxruntime's own exceptions (InvalidGraph, Fail, NotImplemented, ...)
            raise ValueError(f"ONNX Runtime {ort.__version__} cannot load '{path}': {e}") from e
        self.input_name = self.session.get_inputs()[0].name
        self.provider = self.session.get_providers()[0]
        self.threads = options.intra_op_num_threads
        self.path = path

    @property
    def metadata(self) -> dict:
        """The model's ``metadata_props`` as ONNX Runtime reads them (strings)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input_name: x.detach().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)
