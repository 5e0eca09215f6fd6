"""Wall-clock latency (what users buy), with its uncertainty; parameter and MAC counts.

Latency is measured in PyTorch eager (``runtime='torch'``) or in ONNX Runtime (``runtime='onnxruntime'``:
each model exported to ONNX and run in a session, as it would be deployed).

Every latency practise-df reports comes from :func:`compare_latency`: the models compared are timed
interleaved after warm-up, in rounds (each model once per round, in a seeded random order), until the
95% interval of every saving is narrower than ``ci_width`` percentage points or ``max_seconds`` have
passed (``repeats='auto'``); a number of repeats fixes the rounds instead. The rounds run in sessions of
:data:`SESSION_ROUNDS`, each on fresh copies of the models, and a saving's interval comes from the spread
between consecutive batches of rounds (:func:`paired_saving`): where the weights lie in memory moves the
saving by several points on a shared CPU, and so does a drift of the machine during the measurement. The
result carries, besides the medians, each saving with its interval, the rounds, the runtime and the
machine's load while measuring, and a one-line warning when a saving cannot be told from noise or the
machine was busy.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import os
import random
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import psutil
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import check_blocks, drop_blocks, find_blocks
from .config import AUTO, CI_WIDTH, MAX_SECONDS, RUNTIMES, check_repeats  # noqa: F401  (re-exported)
from .export import onnxruntime_models
from .models import model_device
from .runtime import OnnxRuntimeModel, provider_name

MIN_ROUNDS = 6  # the fewest rounds for which a saving gets an interval (and a single latency a median's)
SESSION_ROUNDS = 3  # rounds per session: each session times fresh copies of the models (paired_saving)
BATCHES = 10  # consecutive batches of rounds whose spread gives a saving's interval (paired_saving)
CONFIDENCE = 0.95
BUSY_CORES = 0.5  # other processes using more than this many of the cores the timing needs: the machine is busy


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


@dataclass
class Saving:
    """Latency saved by one model against the baseline, in percent, with its 95% interval (``low``,
    ``high``; None when the runs are too few for one, see :data:`MIN_ROUNDS`)."""
    pct: float
    low: Optional[float]
    high: Optional[float]
    pairs: int

    @property
    def width(self) -> float:
        return math.inf if self.low is None else self.high - self.low

    @property
    def lower(self) -> float:
        """The saving the machine delivers with 95% confidence: the interval's low end (the point estimate
        when the runs are too few for an interval)."""
        return self.pct if self.low is None else self.low

    @property
    def within_noise(self) -> bool:
        """The interval is wider than the saving itself: it cannot be told from no saving."""
        return self.width > abs(self.pct)

    def describe(self) -> str:
        if self.low is None:
            return f'{self.pct:.1f}% (no interval: {self.pairs} runs, {MIN_ROUNDS} needed)'
        return f'{self.pct:.1f}% (95% interval {self.low:.1f}% to {self.high:.1f}%, {self.pairs} runs)'

    def to_dict(self):
        return {'saved_pct': self.pct, 'saved_low': self.low, 'saved_high': self.high, 'pairs': self.pairs}


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Tuple[float, Optional[float],
                                                                                      Optional[float]]:
    """(median, low, high): the median of ``values`` and its distribution-free interval.

    The interval runs between two order statistics chosen with the binomial(n, 1/2) distribution (the
    sign test's interval): it covers the true median with probability at least ``confidence`` for any
    continuous distribution of independent values, so it needs no normality and a few runs slowed by
    another process move it little. ``low``/``high`` are None below :data:`MIN_ROUNDS` values at 95%.
    """
    x = sorted(values)
    k = _order_index(len(x), confidence)
    median = statistics.median(x)
    return (median, None, None) if k == 0 else (median, x[k - 1], x[len(x) - k])


@functools.lru_cache(maxsize=None)
def _order_index(n: int, confidence: float) -> int:
    """The largest k with P(Binomial(n, 1/2) < k) <= (1 - confidence) / 2 (0: no interval exists)."""
    tail, k, half = 0.0, 0, (1 - confidence) / 2
    while k < n // 2:
        step = math.comb(n, k) / 2 ** n
        if tail + step > half:
            break
        tail += step
        k += 1
    return k


def paired_saving(baseline_ms: Sequence[float], variant_ms: Sequence[float],
                  confidence: float = CONFIDENCE, batches: int = BATCHES) -> Saving:
    """The saving of ``variant`` over ``baseline`` from timings taken in the same rounds, in order.

    Each round gives one ratio ``variant / baseline`` of two runs made moments apart, so a change of the
    machine's speed that hits both models alike cancels within the pair. Two things do not cancel:
    where a model's weights happen to lie in memory (on the 2-core development machine, deep copies of
    the same two models, timed one after another, saved from 10% to 21%; BENCHMARKS.md, issue 33), which
    is why :func:`compare_latency` times fresh copies every :data:`SESSION_ROUNDS` rounds, and a drift of
    the machine during the measurement, which makes the ratios of nearby rounds correlated. Either way
    rounds are not independent, and an interval that takes them as independent is too narrow. So the
    rounds are cut, in the order they ran, into ``batches`` consecutive batches (the batch-means method
    of simulation output analysis); each batch gives the median of its log ratios (the median, because
    the noise of a shared machine is a few runs slowed a lot), and the saving and its interval are those
    of the mean of the batch medians, with Student's t for ``batches - 1`` degrees of freedom. The
    spread between batches carries the copies' spread and the drift within the measurement.
    """
    logs = [math.log(v / b) for b, v in zip(baseline_ms, variant_ms)]
    n = len(logs)
    if n < MIN_ROUNDS:
        return Saving(_pct(statistics.median(logs)), None, None, n)
    k = min(batches, n)
    medians = [statistics.median(logs[i * n // k:(i + 1) * n // k]) for i in range(k)]
    centre = statistics.fmean(medians)
    half = _t_quantile(confidence, k - 1) * statistics.stdev(medians) / math.sqrt(k)
    return Saving(_pct(centre), _pct(centre + half), _pct(centre - half), n)


def _pct(log_ratio: float) -> float:
    return 100 * (1 - math.exp(log_ratio))


@functools.lru_cache(maxsize=None)
def _t_quantile(confidence: float, dof: int) -> float:
    from scipy.stats import t  # scipy.stats takes a moment to import: only when an interval is computed
    return float(t.ppf((1 + confidence) / 2, dof))


def cpu_seconds() -> Tuple[float, float]:
    """(CPU seconds used by every process of the machine since boot, CPU seconds used by this one):
    the difference over a measurement is what other processes took from it."""
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, 'iowait', 0.0)
    own = psutil.Process().cpu_times()
    return sum(machine) - idle - getattr(machine, 'guest', 0.0) - getattr(machine, 'guest_nice', 0.0), \
        own.user + own.system


@dataclass
class Comparison:
    """What :func:`compare_latency` measured: one :class:`Latency` per model and the saving of every
    model after the first against the first."""
    latencies: List[Latency]
    savings: List[Saving]
    rounds: int
    seconds: float
    stopped: str  # why the rounds stopped: 'interval', 'time cap' or 'repeats'
    ci_width: float
    max_seconds: float
    load: Dict[str, float] = field(default_factory=dict)

    @property
    def busy(self) -> bool:
        return bool(self.load.get('busy'))

    @property
    def warning(self) -> Optional[str]:
        """One line when the numbers should not be trusted as they are, else None."""
        problems = []
        if self.busy:
            problems.append(f"other processes used {self.load['other_cores']:.1f} of the machine's "
                            f"{self.load['cpu_count']} CPU cores while measuring")
        if self.rounds < MIN_ROUNDS:
            problems.append(f'{self.rounds} runs are too few for a 95% interval ({MIN_ROUNDS} needed)')
        else:
            noisy = [s for s in self.savings if s.within_noise]
            if len(self.savings) == 1 and noisy:
                s = noisy[0]
                problems.append(f'the saving {s.pct:.1f}% has a 95% interval ({s.low:.1f}% to {s.high:.1f}%) wider '
                                'than itself')
            elif noisy:
                problems.append(f'{len(noisy)} of {len(self.savings)} savings have a 95% interval wider than '
                                'themselves')
        if not problems:
            return None
        return ('latency is uncertain: ' + '; '.join(problems) +
                '. Measure on an idle machine, or allow more time (--max-seconds / --latency-max-seconds).')

    def to_dict(self) -> dict:
        """The measurement's conditions (not the per-model numbers): runs, why they stopped, load, warning."""
        return {'runs': self.rounds, 'seconds': self.seconds, 'stopped': self.stopped, 'ci_width': self.ci_width,
                'max_seconds': self.max_seconds, 'confidence': CONFIDENCE, 'load': dict(self.load),
                'warning': self.warning}


def _sync(device: torch.device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
    elif device.type == 'mps':
        torch.mps.synchronize()


def _widest(times: List[List[float]]) -> float:
    """The widest 95% interval, in percentage points, of what the rounds so far estimate: each saving
    against the first model or, for a single model, its median latency."""
    if len(times) == 1:
        median, low, high = median_interval(times[0])
        return math.inf if low is None else 100 * (high - low) / median
    return max(paired_saving(times[0], t).width for t in times[1:])


def _copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose weights lie elsewhere in memory; an ONNX Runtime session (which cannot
    be copied) is timed as it is."""
    if any(isinstance(m, OnnxRuntimeModel) for m in model.modules()):
        return model
    return copy.deepcopy(model)


def _timings(models: List[nn.Module], x: torch.Tensor, warmup: int, repeats: Union[int, str], ci_width: float,
             max_seconds: float, clock: Callable[[], float], seed: int) -> Tuple[List[List[float]], str]:
    """Time the models in rounds (each once per round, in a seeded random order, so neither a slow drift
    of the machine nor the position in a round favours one), in sessions of :data:`SESSION_ROUNDS` rounds,
    each on fresh copies of the models (:func:`paired_saving` says why); returns (times in ms per model,
    why stopped)."""
    device = x.device
    order = list(range(len(models)))
    rng = random.Random(seed)
    times: List[List[float]] = [[] for _ in models]
    with torch.inference_mode():
        for model in models:
            for _ in range(warmup):
                model(x)
        _sync(device)
        start, check_at, current = clock(), MIN_ROUNDS, list(models)
        while True:
            if times[0] and len(times[0]) % SESSION_ROUNDS == 0:  # a new session: new copies, one at a time
                for i, model in enumerate(models):
                    current[i] = None
                    current[i] = _copy(model)
                _sync(device)  # a GPU copy runs asynchronously: it must not spill into the next timing
            rng.shuffle(order)
            for i in order:
                t0 = clock()
                current[i](x)
                _sync(device)
                times[i].append((clock() - t0) * 1000)
            rounds = len(times[0])
            if repeats != AUTO:
                if rounds >= repeats:
                    return times, 'repeats'
                continue
            if rounds >= check_at:  # intervals are checked on a growing schedule: cheap for thousands of runs
                check_at = max(rounds + 1, int(rounds * 1.05))
                if _widest(times) <= ci_width:
                    return times, 'interval'
            if rounds >= MIN_ROUNDS and clock() - start >= max_seconds:
                return times, 'time cap'


def _summary(times: List[float], x: torch.Tensor) -> Latency:
    q = statistics.quantiles(times, n=10) if len(times) > 1 else [times[0]] * 9
    return Latency(statistics.median(times), q[0], q[-1], x.shape[0], tuple(x.shape[1:]), str(x.device), len(times))


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


def compare_latency(models: Sequence[nn.Module], input_size: Sequence[int], batch_size: int = 1,
                    device: str = 'cpu', warmup: int = 5, repeats: Union[int, str] = AUTO, runtime: str = 'torch',
                    threads: Optional[int] = None, ci_width: float = CI_WIDTH, max_seconds: float = MAX_SECONDS,
                    seed: int = 0, clock: Callable[[], float] = time.perf_counter,
                    cpu_clock: Callable[[], Tuple[float, float]] = cpu_seconds) -> Comparison:
    """Time ``models`` interleaved and compare each with the first (the baseline).

    The models themselves are timed for the first :data:`SESSION_ROUNDS` rounds, then deep copies of
    them, new ones every :data:`SESSION_ROUNDS` rounds (one copy of each model is alive besides the
    models: twice their memory), and the models passed in are left as they were.

    Args:
        models: the baseline first, then the models compared with it (one model: its latency alone).
        repeats: 'auto': rounds continue until every saving's 95% interval is at most ``ci_width``
            percentage points wide (for one model: its median's interval, relative to the median) or
            ``max_seconds`` have passed, and never fewer than :data:`MIN_ROUNDS`; a number fixes them.
        runtime: 'torch', or 'onnxruntime' (each model exported for this batch size and timed in an ONNX
            Runtime session; models already wrapped in :class:`~practise_df.runtime.OnnxRuntimeModel`
            are timed as they are); ``threads`` sets torch's threads or the session's intra-op threads.
        seed: the order of the models within each round.
        clock, cpu_clock: wall clock in seconds, and :func:`cpu_seconds` (what tells how busy the machine
            was); tests give fakes.
    """
    check_repeats(repeats)
    if not models:
        raise ValueError('compare_latency needs at least one model.')
    if ci_width <= 0 or max_seconds <= 0:
        raise ValueError(f'ci_width and max_seconds must be positive, got {ci_width} and {max_seconds}.')
    info = runtime_info(runtime, device, threads)
    with _torch_threads(info['threads']):
        if runtime == 'onnxruntime':  # sessions take host tensors and place them themselves
            models, dev = onnxruntime_models(models, input_size, batch_size, device, info['threads']), 'cpu'
        else:
            _refuse_sessions(models)
            dev = device
        x = torch.randn(batch_size, *input_size, device=torch.device(dev))
        moved = [m.to(dev).eval() for m in models]
        load_before, (cpu_before, own_before), start = psutil.getloadavg(), cpu_clock(), clock()
        times, stopped = _timings(moved, x, warmup, repeats, ci_width, max_seconds, clock, seed)
        seconds = clock() - start
        cpu_after, own_after = cpu_clock()
    where = str(x.device) if runtime == 'torch' else device
    others = max(0.0, (cpu_after - cpu_before) - (own_after - own_before)) / max(seconds, 1e-9)
    cpu_count = os.cpu_count() or 1
    free = max(0, cpu_count - info['threads'])  # cores the timing leaves to others without slowing down
    load = {'cpu_count': cpu_count, 'other_cores': round(others, 2), 'loadavg_before': round(load_before[0], 2),
            'loadavg_after': round(psutil.getloadavg()[0], 2), 'busy': others > free + BUSY_CORES}
    return Comparison([replace(_summary(t, x), device=where, **info) for t in times],
                      [paired_saving(times[0], t) for t in times[1:]], len(times[0]), seconds, stopped, ci_width,
                      max_seconds, load)


def _refuse_sessions(models: Sequence[nn.Module]) -> None:
    if any(isinstance(m, OnnxRuntimeModel) for m in models):
        raise ValueError("An exported ONNX model runs in ONNX Runtime: measure it with runtime='onnxruntime' "
                         '(--runtime onnxruntime), beside models exported the same way.')


def measure_latency(model: nn.Module, input_size: Sequence[int], batch_size: int = 1, device: str = 'cpu',
                    warmup: int = 5, repeats: Union[int, str] = AUTO, runtime: str = 'torch',
                    threads: Optional[int] = None, **kwargs) -> Latency:
    """Median wall time of one forward pass after warm-up, under ``inference_mode`` (see
    :func:`compare_latency` for ``repeats`` and the other keywords)."""
    return measure_latencies([model], input_size, batch_size, device, warmup, repeats, runtime, threads, **kwargs)[0]


def measure_latencies(models: List[nn.Module], input_size: Sequence[int], batch_size: int = 1,
                      device: str = 'cpu', warmup: int = 5, repeats: Union[int, str] = AUTO, runtime: str = 'torch',
                      threads: Optional[int] = None, **kwargs) -> List[Latency]:
    """The :class:`Latency` of each model, timed interleaved by :func:`compare_latency` (which also gives
    the savings with their intervals)."""
    return compare_latency(models, input_size, batch_size, device, warmup, repeats, runtime, threads,
                           **kwargs).latencies


def block_latency(model: nn.Module, blocks: Iterable[str], input_size: Sequence[int], batch_size: int = 1,
                  device: str = 'cpu', warmup: int = 3, repeats: Union[int, str] = AUTO, runtime: str = 'torch',
                  threads: Optional[int] = None, **kwargs) -> dict:
    """Latency saved by dropping each block alone, measured on the model with that block dropped,
    all variants timed interleaved with the full model (:func:`compare_latency`).

    Returns what ``practise-df latency --per-block`` writes and ``compress --block-latency`` reads:
    ``{'blocks': {block: {'latency_ms', 'saved_ms', 'saved_pct', 'saved_low', 'saved_high', 'base_ms'}},
    'input_size', 'batch_size', 'device', runtime, threads, provider, runs, load, warning, ...}``.
    ``saved_pct`` and its 95% interval are the median paired saving relative to the full model.
    """
    blocks = check_blocks(model, blocks, find_blocks(model, input_size))  # a typo must not time a fake block
    variants = [model] + [drop_blocks(model, [b], candidates=blocks) for b in blocks]
    result = compare_latency(variants, input_size, batch_size, device, warmup, repeats, runtime, threads, **kwargs)
    base = result.latencies[0].median_ms
    table = {b: {'latency_ms': lat.median_ms, 'saved_ms': base - lat.median_ms, 'base_ms': base,
                 **{k: v for k, v in saving.to_dict().items() if k != 'pairs'}}
             for b, lat, saving in zip(blocks, result.latencies[1:], result.savings)}
    return {'blocks': table, 'input_size': list(input_size), 'batch_size': batch_size, 'device': device,
            **runtime_info(runtime, device, threads), **result.to_dict()}


def block_latency_savings(model: nn.Module, blocks: Iterable[str], input_size: Sequence[int],
                          batch_size: int = 1, device: str = 'cpu', warmup: int = 3,
                          repeats: Union[int, str] = AUTO, runtime: str = 'torch', threads: Optional[int] = None,
                          **kwargs) -> Dict[str, dict]:
    """The per-block table of :func:`block_latency`: {block: {'latency_ms', 'saved_ms', 'saved_pct',
    'saved_low', 'saved_high', 'base_ms'}}."""
    return block_latency(model, blocks, input_size, batch_size, device, warmup, repeats, runtime, threads,
                         **kwargs)['blocks']


def model_latency_report(model: nn.Module, input_size: Sequence[int], drop: Optional[Sequence[str]] = None,
                         batch_size: int = 1, device: str = 'cpu', warmup: int = 5, repeats: Union[int, str] = AUTO,
                         runtime: str = 'torch', threads: Optional[int] = None,
                         baseline: Optional[Tuple[str, nn.Module]] = None, **kwargs) -> dict:
    """Latency, params and MACs of ``model`` and, with ``drop``, of the model with those blocks dropped,
    or of a ``baseline`` (name, model) such as the teacher a compressed model came from, timed interleaved,
    with the latency saved and its interval: what ``practise-df latency`` reports."""
    variants = [(baseline[0], baseline[1])] if baseline else []
    variants += [('model', model)]
    if drop:
        variants += [(f"dropped {','.join(drop)}", drop_blocks(model, drop))]
    result = compare_latency([m for _, m in variants], input_size, batch_size, device, warmup, repeats, runtime,
                             threads, **kwargs)
    report = {'batch_size': batch_size, 'input_size': list(input_size), 'device': device,
              **runtime_info(runtime, device, threads), **result.to_dict(),
              'variants': [{'name': n, **lat.to_dict(), **_size(m, input_size)}
                           for (n, m), lat in zip(variants, result.latencies)]}
    if result.savings:
        report.update(result.savings[-1].to_dict(), compared=[variants[0][0], variants[-1][0]])
    return report


def _size(model: nn.Module, input_size: Sequence[int]) -> dict:
    """Params and MACs, None for an exported graph (ONNX Runtime runs it; torch cannot count it)."""
    if isinstance(model, OnnxRuntimeModel):
        return {'params': None, 'macs': None}
    return {'params': count_params(model), 'macs': count_macs(model, input_size)}

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
