"""Wall-clock latency (what users buy), parameter and MAC counts.

Latency is measured in PyTorch eager (``runtime='torch'``) or in ONNX Runtime (``runtime='onnxruntime'``:
each model exported to ONNX and run in a session, as it would be deployed).
"""
from __future__ import annotations

import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Dict, Iterable, List, Optional, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import check_blocks, drop_blocks, find_blocks
from .export import onnxruntime_models
from .models import model_device
from .runtime import provider_name

RUNTIMES = ('torch', 'onnxruntime')


@dataclass
class Latency:
    median_ms: float
    p10_ms: float
    p90_ms: float
    batch_size: int
    input_size: Sequence[int]
    device: str
    repeats: int
    runtime: str = 'torch'
    threads: Optional[int] = None
    provider: Optional[str] = None  # ONNX Runtime's execution provider

    def to_dict(self):
        return asdict(self)


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def _timings(models: List[nn.Module], x: torch.Tensor, warmup: int, repeats: int) -> List[List[float]]:
    """Time each model ``repeats`` times, interleaved so slow drifts of the machine hit all equally."""
    device = x.device
    with torch.inference_mode():
        for model in models:
            for _ in range(warmup):
                model(x)
        _sync(device)
        times = [[] for _ in models]
        for _ in range(repeats):
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(x)
                _sync(device)
                times[i].append((time.perf_counter() - start) * 1000)
    return times


def _summary(times: List[float], x: torch.Tensor, repeats: int) -> Latency:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return Latency(statistics.median(times), q[0], q[-1], x.shape[0], tuple(x.shape[1:]), str(x.device), repeats)


def runtime_info(runtime: str = 'torch', device: str = 'cpu', threads: Optional[int] = None) -> dict:
    """What a latency was measured with: runtime, threads (default torch's thread count, for both
    runtimes) and, for ONNX Runtime, the execution provider ``device`` maps to."""
    if runtime not in RUNTIMES:
        raise ValueError(f"Unknown runtime '{runtime}'; choose from {', '.join(RUNTIMES)}.")
    return {'runtime': runtime, 'threads': threads or torch.get_num_threads(),
            'provider': provider_name(device) if runtime == 'onnxruntime' else None}


@contextlib.contextmanager
def _torch_threads(threads: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure_latency(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, device: str = 'cpu',
                    warmup: int = 5, repeats: int = 20, runtime: str = 'torch',
                    threads: Optional[int] = None) -> Latency:
    """Median wall time of one forward pass after warm-up, under ``inference_mode``."""
    return measure_latencies([model], input_size, batch_size, device, warmup, repeats, runtime, threads)[0]


def measure_latencies(models: List[nn.Module], input_size: Sequence[int], batch_size: int = 1,
                      device: str = 'cpu', warmup: int = 5, repeats: int = 20, runtime: str = 'torch',
                      threads: Optional[int] = None) -> List[Latency]:
    """:func:`measure_latency` for several models, timed interleaved.

    ``runtime='onnxruntime'`` exports each model to ONNX for this batch size and times its ONNX Runtime
    session (models already wrapped in :class:`~practise_df.runtime.OnnxRuntimeModel` are timed as they
    are); ``threads`` sets torch's threads or the session's intra-op threads.
    """
    if repeats < 1:
        raise ValueError('repeats must be at least 1')
    info = runtime_info(runtime, device, threads)
    with _torch_threads(info['threads']):
        if runtime == 'onnxruntime':  # sessions take host tensors and place them themselves
            models, dev = onnxruntime_models(models, input_size, batch_size, device, info['threads']), 'cpu'
        else:
            dev = device
        x = torch.randn(batch_size, *input_size, device=torch.device(dev))
        moved = [m.to(dev).eval() for m in models]
        times = _timings(moved, x, warmup, repeats)
    where = str(x.device) if runtime == 'torch' else device
    return [replace(_summary(t, x, repeats), device=where, **info) for t in times]


def block_latency_savings(model: nn.Module, blocks: Iterable[str], input_size: Sequence[int],
                          batch_size: int = 1, device: str = 'cpu', warmup: int = 3,
                          repeats: int = 10, runtime: str = 'torch', threads: Optional[int] = None) -> Dict[str, dict]:
    """Latency saved by dropping each block alone, measured on the model with that block dropped.

    Returns {block: {'latency_ms', 'saved_ms', 'saved_pct', 'base_ms'}}; ``saved_pct`` is relative to
    the full model's median ``base_ms``. All variants are timed interleaved in one run, in ``runtime``
    (see :func:`measure_latencies`).
    """
    blocks = check_blocks(model, blocks, find_blocks(model, input_size))  # a typo must not time a fake block
    variants = [model] + [drop_blocks(model, [b], candidates=blocks) for b in blocks]
    lat = measure_latencies(variants, input_size, batch_size, device, warmup, repeats, runtime, threads)
    base = lat[0].median_ms
    return {b: {'latency_ms': lat_b.median_ms, 'saved_ms': base - lat_b.median_ms,
                'saved_pct': 100.0 * (base - lat_b.median_ms) / base, 'base_ms': base}
            for b, lat_b in zip(blocks, lat[1:])}


def model_latency_report(model: nn.Module, input_size: Sequence[int], drop: Optional[Sequence[str]] = None,
                         batch_size: int = 1, device: str = 'cpu', warmup: int = 5, repeats: int = 20,
                         runtime: str = 'torch', threads: Optional[int] = None) -> dict:
    """Latency, params and MACs of ``model`` and, with ``drop``, of the model with those blocks dropped
    (timed interleaved), with the latency saved: what ``practise-df latency`` reports."""
    variants = [('model', model)] + ([(f"dropped {','.join(drop)}", drop_blocks(model, drop))] if drop else [])
    lats = measure_latencies([m for _, m in variants], input_size, batch_size, device, warmup, repeats, runtime,
                             threads)
    report = {'batch_size': batch_size, 'input_size': list(input_size), 'device': device, 'repeats': repeats,
              **runtime_info(runtime, device, threads),
              'variants': [{'name': n, **lat.to_dict(), 'params': count_params(m), 'macs': count_macs(m, input_size)}
                           for (n, m), lat in zip(variants, lats)]}
    if drop:
        report['saved_pct'] = 100 * (1 - lats[1].median_ms / lats[0].median_ms)
    return report


def read_block_latency(path: str) -> Dict[str, dict]:
    """Per-block savings from ``practise-df latency --per-block`` (or a plain {block: {...}} mapping),
    checked: every entry has numeric ``saved_pct`` and ``saved_ms``."""
    hint = ('expected {"blocks": {BLOCK: {"saved_ms": 1.2, "saved_pct": 3.4}, ...}} as written by '
            'practise-df latency --per-block --output FILE')
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"Block-latency file '{path}' does not exist; {hint}.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"Block-latency file '{path}' cannot be read as JSON ({e}); {hint}.") from None
    table = data.get('blocks', data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f"'{path}' is not a per-block latency file: {hint}.")
    for block, entry in table.items():
        for key in ('saved_pct', 'saved_ms'):
            value = entry.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"'{path}': block {block} has {key}={value!r}, not a number; {hint}.")
    return table


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (torch's FLOP counter / 2)."""
    x = torch.zeros(1, *input_size, device=model_device(model))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(x)
    return counter.get_total_flops() // 2
