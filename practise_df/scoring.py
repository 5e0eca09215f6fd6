"""Recoverability of each block, PRACTISE scores and block selection.

Recoverability (PRACTISE): drop one block, insert identity adaptors around it, train only the
adaptors to match the teacher's pre-pooling features (MSE) on the tiny set, then measure the feature
MSE on held-out images. Score = recoverability / latency saved (%); the lowest scores are dropped.
Latency savings are measured with a 95% interval (:mod:`practise_df.latency`); blocks whose savings
cannot be told apart are scored with one shared saving (:func:`comparable_savings`), so among them
recoverability alone decides the order, not the noise of the clock.

Two estimators share this code:

- ``official``: the settings of the official code (SGD lr 0.02, momentum 0.9, weight decay 1e-4,
  StepLR x0.1 at 40% of 1000 steps, batch 64) at the data config's resolution.
- ``fast`` (default): the same adaptors fitted with Adam (lr 1e-3) for 60 steps of batch 32 on
  images resized to half resolution (the adaptors are 1x1 convs: they see the same channel statistics at any size).
  ``benchmarks/bench_estimator.py`` measures its time and rank agreement against ``official``.

Teacher features are computed once per image set and reused for every block.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ._distributed import gather, my_share, on_main_process, process_state
from ._renamed import renamed_fields
from .adaptors import fold_adaptors, insert_adaptors
from .blocks import check_blocks, drop_blocks, find_blocks
from .latency import block_latency_savings, compare_latency
from .models import PrePoolFeatures, model_device

_logger = logging.getLogger(__name__)


@renamed_fields(iterations='steps')
@dataclass(frozen=True)
class RecoverySettings:
    """How the adaptors are fitted when measuring recoverability."""
    steps: int = 60  # optimizer steps
    batch_size: int = 32
    optimizer: str = 'adam'  # 'adam' or 'sgd'
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    step_at: float = 0.4  # StepLR(x0.1) at this fraction of the steps; 0 disables it
    resolution_scale: float = 0.5  # images are resized by this factor (1.0 = as given)


ESTIMATORS: Dict[str, RecoverySettings] = {
    'official': RecoverySettings(steps=1000, batch_size=64, optimizer='sgd', lr=0.02, momentum=0.9,
                                 weight_decay=1e-4, step_at=0.4, resolution_scale=1.0),
    'fast': RecoverySettings(),
}


@dataclass
class BlockScore:
    block: str
    recoverability: float  # held-out feature MSE after fitting the adaptors
    mse_dropped: float  # held-out feature MSE right after dropping, before any fitting
    saved_ms: float
    saved_pct: float
    score: float  # recoverability / the saving of the block's tier (comparable_savings); lower = drop first
    num_adaptors: int = 0
    seconds: float = 0.0
    saved_low: Optional[float] = None  # the 95% interval of saved_pct, when it was measured with one
    saved_high: Optional[float] = None

    def to_dict(self):
        return asdict(self)


def _resize(images: torch.Tensor, scale: float) -> torch.Tensor:
    if scale == 1.0:
        return images
    size = [max(8, int(round(s * scale))) for s in images.shape[-2:]]
    return F.interpolate(images, size=size, mode='bilinear', antialias=True, align_corners=False)


@torch.no_grad()
def compute_features(model: nn.Module, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Pre-pooling features of ``model`` for a tensor of preprocessed images, on the model's device."""
    device = model_device(model)
    extractor = PrePoolFeatures(model.eval())
    return torch.cat([extractor(images[i:i + batch_size].to(device)) for i in range(0, len(images), batch_size)])


@torch.no_grad()
def feature_mse(model: nn.Module, images: torch.Tensor, target: torch.Tensor, batch_size: int = 64) -> float:
    """Mean squared error between ``model``'s pre-pooling features and ``target``."""
    device = model_device(model)
    extractor = PrePoolFeatures(model.eval())
    total = 0.0
    for i in range(0, len(images), batch_size):
        out = extractor(images[i:i + batch_size].to(device))
        total += F.mse_loss(out, target[i:i + batch_size], reduction='sum').item()
    return total / target.numel()


def fit_adaptors(student: nn.Module, params: List[nn.Parameter], images: torch.Tensor, target: torch.Tensor,
                 settings: RecoverySettings, seed: int = 0) -> List[float]:
    """Train only ``params`` so that ``student``'s pre-pooling features match ``target``. Returns losses."""
    student.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if settings.optimizer == 'sgd':
        opt = torch.optim.SGD(params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay)
    elif settings.optimizer == 'adam':
        opt = torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)
    else:
        raise ValueError(f"Unknown optimizer '{settings.optimizer}'; use 'sgd' or 'adam'.")
    step = max(1, int(settings.step_at * settings.steps)) if settings.step_at > 0 else settings.steps + 1
    sched = torch.optim.lr_scheduler.StepLR(opt, step, gamma=0.1)
    extractor = PrePoolFeatures(student.eval())  # eval: BatchNorm keeps the teacher's statistics
    device = params[0].device if params else torch.device('cpu')
    gen = torch.Generator().manual_seed(seed)
    losses = []
    n = len(images)
    order = torch.randperm(n, generator=gen)
    pos = 0
    for _ in range(settings.steps if params else 0):
        if pos + min(settings.batch_size, n) > n:
            order, pos = torch.randperm(n, generator=gen), 0
        idx = order[pos:pos + settings.batch_size]
        pos += len(idx)
        loss = F.mse_loss(extractor(images[idx].to(device)), target[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f'Adaptor fitting diverged (loss {losses[-1]}); lower the learning rate.')
    for p in params:
        p.requires_grad_(False)
    return losses


def drop_and_recover(teacher: nn.Module, blocks: Sequence[str], train_images: torch.Tensor,
                     settings: RecoverySettings = ESTIMATORS['fast'], seed: int = 0) -> nn.Module:
    """The pruned model: blocks dropped, adaptors fitted and folded. A plain model of the teacher's class."""
    train_images = _resize(train_images, settings.resolution_scale)
    train_target = compute_features(teacher, train_images)
    student = drop_blocks(teacher, blocks)
    fit_adaptors(student, insert_adaptors(student, blocks, train_images.shape[1:]), train_images, train_target,
                 settings, seed)
    return fold_adaptors(student)


def comparable_savings(latency: Dict[str, dict]) -> Dict[str, float]:
    """The latency saving (%) each block is scored with: blocks whose savings cannot be told apart share one.

    Blocks are taken from the largest saving down; each block whose 95% interval overlaps the interval of
    the first block of the current tier (its ``saved_high`` reaches that block's ``saved_low``) joins
    the tier, else it starts the next one. Every block of a tier is scored with the tier's mean saving,
    so within a tier the order is that of recoverability. A block measured without an interval (e.g. a
    ``--block-latency`` file of an older version) is a tier of its own.
    """
    ordered = sorted(latency, key=lambda b: -latency[b]['saved_pct'])
    tiers: List[List[str]] = []
    for block in ordered:
        entry, lead = latency[block], latency[tiers[-1][0]] if tiers else None
        if lead is not None and None not in (entry.get('saved_high'), lead.get('saved_low')) \
                and entry['saved_high'] >= lead['saved_low']:
            tiers[-1].append(block)
        else:
            tiers.append([block])
    return {b: sum(latency[m]['saved_pct'] for m in tier) / len(tier) for tier in tiers for b in tier}


def score_blocks(teacher: nn.Module, train_images: torch.Tensor, heldout_images: torch.Tensor,
                 blocks: Optional[Sequence[str]] = None, estimator: str = 'fast',
                 settings: Optional[RecoverySettings] = None, latency: Optional[Dict[str, dict]] = None,
                 latency_kwargs: Optional[dict] = None, seed: int = 0, progress: bool = True,
                 on_score: Optional[Callable[[BlockScore], None]] = None) -> List[BlockScore]:
    """PRACTISE scores of ``blocks`` (default: every candidate), sorted lowest (drop first) to highest.

    Args:
        teacher: the model to compress (eval mode; not modified).
        train_images / heldout_images: preprocessed image tensors (N, C, H, W): the tiny set the
            adaptors are fitted on, and the images recoverability is measured on.
        estimator: 'fast' or 'official' (see module doc); ``settings`` overrides it.
        latency: precomputed :func:`block_latency_savings` output; measured when None with
            ``latency_kwargs`` (input_size, batch_size, device, repeats, ...). The score divides by the
            block's saving as :func:`comparable_savings` pools it.
        on_score: called with each block's result as soon as it is known (e.g. to save progress), on the
            process that scored it.

    Under ``accelerate launch`` the blocks are split over the processes (every n-th block from the rank on)
    and the scores gathered on every process; each block's fit depends only on ``seed``, so the scores are
    those of one process. Latency, when measured here, is measured on the main process while the others wait.
    """
    if estimator not in ESTIMATORS and settings is None:
        raise ValueError(f"Unknown estimator '{estimator}'; choose from {sorted(ESTIMATORS)}.")
    settings = settings or ESTIMATORS[estimator]
    if len(train_images) == 0 or len(heldout_images) == 0:
        raise ValueError('Scoring needs at least one training and one held-out image.')
    teacher = teacher.eval()
    candidates = find_blocks(teacher, tuple(train_images.shape[1:]))
    blocks = list(blocks) if blocks is not None else candidates
    check_blocks(teacher, blocks, candidates)
    if latency is None:  # timed on the main process alone: the others would load the same cores or device
        kw = {'input_size': tuple(heldout_images.shape[1:]), **(latency_kwargs or {})}
        latency = on_main_process(lambda: block_latency_savings(teacher, blocks, **kw))
    shared = comparable_savings(latency)
    train_x = _resize(train_images, settings.resolution_scale)
    held_x = _resize(heldout_images, settings.resolution_scale)
    train_t = compute_features(teacher, train_x)  # computed once, reused for every block
    held_t = compute_features(teacher, held_x)
    results = []
    state = process_state()
    desc = 'scoring blocks' + (f' (rank {state.process_index})' if state.num_processes > 1 else '')
    bar = tqdm(my_share(blocks), desc=desc, disable=not progress)
    for block in bar:
        start = time.perf_counter()
        student = drop_blocks(teacher, [block], candidates=candidates)
        mse_dropped = feature_mse(student, held_x, held_t)
        params = insert_adaptors(student, [block], train_x.shape[1:])
        if mse_dropped == 0.0:  # the block changes nothing (e.g. a zero-initialised branch): nothing to recover
            rec = 0.0
        else:
            fit_adaptors(student, params, train_x, train_t, settings, seed)
            rec = feature_mse(student, held_x, held_t)
        saved = latency[block]
        # A block whose removal saves no measurable time can never be worth dropping first.
        pct = max(shared[block], 1e-3)
        results.append(BlockScore(block, rec, mse_dropped, saved['saved_ms'], saved['saved_pct'], rec / pct,
                                  num_adaptors=len(params), seconds=time.perf_counter() - start,
                                  saved_low=saved.get('saved_low'), saved_high=saved.get('saved_high')))
        bar.set_postfix(block=block, rec=f'{rec:.4g}')
        if on_score is not None:
            on_score(results[-1])
    position = {block: i for i, block in enumerate(blocks)}  # ties keep the blocks' order, whoever scored them
    return sorted(gather(results), key=lambda s: (s.score, position[s.block]))


def select_blocks(scores: Sequence[BlockScore], drop: Optional[int] = None,
                  latency_reduction: Optional[float] = None, model: Optional[nn.Module] = None,
                  latency_kwargs: Optional[dict] = None, steps: Optional[list] = None) -> List[str]:
    """Pick blocks to drop from :func:`score_blocks` output.

    Either ``drop`` (the K lowest scores) or ``latency_reduction`` (a fraction, e.g. 0.25): blocks are
    added by score and the whole student is timed against ``model`` after each addition
    (:func:`~practise_df.latency.compare_latency` with ``latency_kwargs``; savings of single blocks do
    not add up exactly) until the low end of the saving's 95% interval reaches the target, so the target
    is met with 95% confidence and not by a lucky run. Without an interval (fewer than 6 fixed repeats)
    the point estimate decides. ``steps``, a list, receives each measurement (the blocks, the saving and
    its interval), so a caller can show why the selection stopped where it did.
    """
    if (drop is None) == (latency_reduction is None):
        raise ValueError('Give exactly one of drop (a block count) or latency_reduction (a fraction).')
    ordered = [s.block for s in sorted(scores, key=lambda s: s.score)]
    if drop is not None:
        if not 0 < drop <= len(ordered):
            raise ValueError(f'drop must be between 1 and {len(ordered)} (the number of scored blocks), got {drop}.')
        return ordered[:drop]
    if not 0 < latency_reduction < 1:
        raise ValueError(f'latency_reduction is a fraction between 0 and 1 (e.g. 0.25), got {latency_reduction}.')
    if model is None or not ordered:
        raise ValueError('Selecting by latency_reduction needs the model to re-measure latency and scored blocks.')
    chosen: List[str] = []
    saving = None
    for block in ordered:
        chosen.append(block)
        comparison = compare_latency([model, drop_blocks(model, chosen, candidates=ordered)], **(latency_kwargs or {}))
        saving = comparison.savings[0]
        _logger.info('dropping %s: latency saved %s', ','.join(chosen), saving.describe())
        if steps is not None:
            steps.append({'blocks': list(chosen), 'saved_pct': saving.pct, 'saved_low': saving.low,
                          'saved_high': saving.high, 'runs': saving.pairs})
        if saving.lower >= 100 * latency_reduction:
            return chosen
    raise ValueError(f'A latency reduction of {100 * latency_reduction:.0f}% cannot be reached with 95% confidence: '
                     f'dropping all {len(ordered)} scored blocks saves {saving.describe()}. Ask for less, score more '
                     'blocks, or measure on an idle machine (a busy one widens the interval).')
