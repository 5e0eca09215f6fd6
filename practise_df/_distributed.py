"""Spreading a stage over the processes of ``accelerate launch`` so that the result is the one process's.

Work is split by item (blocks to score, batches to evaluate) with Accelerate's ``PartialState``; what a
process computes for an item never depends on which process computes it or on how many there are. Results
come back with ``gather_object`` (in rank order, re-sorted by item) or, for counts, summed with ``reduce``:
no item is padded or counted twice, so a last batch that does not fill every process changes nothing.
Outside ``accelerate launch`` every helper is the plain single-process loop.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Iterator, List, Sequence, Tuple, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce
from torch.utils.data import DataLoader, SequentialSampler

T = TypeVar('T')


def needs_cpu_group() -> bool:
    """Launched as several processes on a machine without GPUs: Accelerate forms the (gloo) process group only
    when asked for the CPU; otherwise every process would run alone as its own main process."""
    no_accelerator = not (torch.cuda.is_available() or (hasattr(torch, 'xpu') and torch.xpu.is_available()))
    return int(os.environ.get('WORLD_SIZE', '1')) > 1 and no_accelerator


def process_state() -> PartialState:
    """Accelerate's state of this process, with the processes of ``accelerate launch`` joined in one group on
    a CPU-only machine too (:func:`needs_cpu_group`). Every use of the state goes through here, so that the
    first one, which sets the state up, never leaves the processes apart."""
    return PartialState(cpu=True) if needs_cpu_group() else PartialState()


def my_share(items: Sequence[T]) -> List[T]:
    """This process's items: every n-th from its rank on. Interleaved rather than Accelerate's contiguous
    ``split_between_processes``, so that neighbouring items of similar cost (blocks of one stage) spread
    over the processes."""
    state = process_state()
    return list(items)[state.process_index::state.num_processes]


def gather(mine: List[T]) -> List[T]:
    """Every process's list, concatenated in rank order, on every process."""
    return list(gather_object(list(mine))) if process_state().num_processes > 1 else list(mine)


def on_main_process(fn: Callable[[], T]) -> T:
    """``fn()`` run on the main process alone while the others wait (a latency measurement must not share the
    device or the CPU cores); its result returned on every process."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    result = [fn() if state.is_main_process else None]
    broadcast_object_list(result)  # the other processes wait here
    return result[0]


def sum_over_processes(counts: torch.Tensor) -> torch.Tensor:
    """Integer counts summed over the processes (on the process's device, as NCCL needs)."""
    state = process_state()
    if state.num_processes == 1:
        return counts
    return reduce(counts.to(state.device), 'sum').cpu()


def sharded_batches(loader: Iterable) -> Iterator[Tuple[int, int, Any]]:
    """``(batch index, position of its first image, batch)`` for this process's batches of ``loader``: batch i
    goes to process i mod n (Accelerate's ``BatchSamplerShard`` split), with the indices and positions it
    has in the whole loader, so per-batch seeds and per-image results do not depend on the processes.

    A :class:`DataLoader` is rebuilt over this process's batches only (its images are not decoded
    elsewhere); any other iterable of ``(images, labels)`` batches is read whole and the others skipped.
    """
    state = process_state()
    if isinstance(loader, DataLoader) and state.num_processes > 1:
        if loader.batch_sampler is None or not isinstance(loader.sampler, SequentialSampler):
            raise ValueError('Evaluation over several processes needs a DataLoader in a fixed order (a batch_size '
                             'and shuffle=False), so that every process splits the same batches.')
        batches = list(loader.batch_sampler)
        starts = [0]
        for batch in batches[:-1]:
            starts.append(starts[-1] + len(batch))
        mine = list(range(state.process_index, len(batches), state.num_processes))
        shard = DataLoader(loader.dataset, batch_sampler=[batches[i] for i in mine], collate_fn=loader.collate_fn,
                           num_workers=loader.num_workers, pin_memory=loader.pin_memory)
        yield from ((i, starts[i], batch) for i, batch in zip(mine, shard))
        return
    start = 0
    for i, batch in enumerate(loader):
        if i % state.num_processes == state.process_index:
            yield i, start, batch
        start += len(batch[0])
