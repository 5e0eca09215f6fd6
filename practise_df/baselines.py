"""Baselines to compare PRACTISE's block choice with, at equal measured latency.

- :func:`first_blocks`: the first ``k`` candidates in network order.
- :func:`random_blocks`: ``k`` candidates drawn at random (a random order when ``k`` is all of them).
- :func:`output_difference`: rank blocks by how much dropping each alone changes the teacher's
  pre-pooling features, with no adaptor fitted (``BlockScore.mse_dropped``, which
  :func:`~practise_df.score_blocks` records anyway); :func:`output_difference_scores` computes it
  without fitting any adaptor.
- :func:`grow_to_latency`: take any ordered list of blocks and drop its prefix until a measured latency
  saving is reached (the greedy re-measuring loop of :func:`~practise_df.select_blocks`).
- :func:`filter_prune` / :func:`filter_prune_to_latency`: channel (filter) pruning with Torch-Pruning
  (L1 magnitude, uniform ratio), the ratio searched until the pruned model saves a measured latency
  fraction. The pre-pooling feature width and the classifier are kept, so MiR finetuning applies.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

from .latency import measure_latencies
from .scoring import BlockScore, RecoverySettings, score_blocks, select_blocks

_logger = logging.getLogger(__name__)


def first_blocks(candidates: Sequence[str], k: int) -> list[str]:
    """The first ``k`` candidate blocks (candidates are listed in network order by find_blocks)."""
    if not 0 <= k <= len(candidates):
        raise ValueError(f'k must be between 0 and {len(candidates)} (the number of candidates), got {k}.')
    return list(candidates[:k])


def random_blocks(candidates: Sequence[str], k: int, seed: int = 0) -> list[str]:
    """``k`` candidates drawn without replacement, in drawn order; a seed gives the same draw, and the
    draw of ``k`` is the first ``k`` of the draw of any larger ``k`` (so growing the list is consistent)."""
    perm = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed)).tolist()
    return [candidates[i] for i in first_blocks(perm, k)]  # first_blocks checks k


def output_difference(scores: Sequence[BlockScore]) -> list[str]:
    """Blocks ordered by the feature MSE right after dropping each alone (lowest = drop first)."""
    return [s.block for s in sorted(scores, key=lambda s: s.mse_dropped)]


def output_difference_scores(teacher: nn.Module, images: torch.Tensor, blocks: Sequence[str] | None = None,
                             latency: dict[str, dict] | None = None, latency_kwargs: dict | None = None,
                             resolution_scale: float = 1.0, progress: bool = False) -> list[BlockScore]:
    """:func:`~practise_df.score_blocks` with no adaptor fitting: ``mse_dropped`` (= ``recoverability``)
    measured on ``images``. Order them with :func:`output_difference`."""
    settings = RecoverySettings(steps=0, resolution_scale=resolution_scale)
    return score_blocks(teacher, images[:1], images, blocks=blocks, settings=settings, latency=latency,
                        latency_kwargs=latency_kwargs, progress=progress)


def grow_to_latency(model: nn.Module, ordered: Sequence[str], latency_reduction: float,
                    latency_kwargs: dict | None = None) -> list[str]:
    """The shortest prefix of ``ordered`` whose dropping saves at least ``latency_reduction`` (a fraction)
    of ``model``'s measured latency; raises ValueError when all of ``ordered`` does not reach it."""
    ranks = [BlockScore(b, 0.0, 0.0, 0.0, 0.0, float(i)) for i, b in enumerate(ordered)]
    return select_blocks(ranks, latency_reduction=latency_reduction, model=model, latency_kwargs=latency_kwargs)


def feature_layer(model: nn.Module) -> nn.Module:
    """The last conv or linear before the classifier: it writes the pre-pooling features."""
    classifier = model.get_classifier() if hasattr(model, 'get_classifier') else None
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m is not classifier]
    if not layers:
        raise ValueError('The model has no conv or linear layer to prune.')
    return layers[-1]


def filter_prune(model: nn.Module, ratio: float, input_size: Sequence[int],
                 ignored_layers: list[nn.Module] | None = None) -> nn.Module:
    """A copy of ``model`` with ``ratio`` of the channels of every prunable group removed (Torch-Pruning,
    L1 magnitude). The classifier and the layer that writes the pre-pooling features are never pruned,
    so the feature width (and MiR) stay as in the teacher."""
    import torch_pruning as tp
    pruned = copy.deepcopy(model).eval()
    if ratio <= 0:
        return pruned
    classifier = pruned.get_classifier() if hasattr(pruned, 'get_classifier') else None
    ignored = [m for m in (classifier, feature_layer(pruned)) if isinstance(m, nn.Module)]
    if ignored_layers:  # given as modules of ``model``: map them to the copy by name
        names = {m: n for n, m in model.named_modules()}
        ignored += [pruned.get_submodule(names[m]) for m in ignored_layers]
    example = torch.zeros(1, *input_size, device=next(pruned.parameters()).device)
    pruner = tp.pruner.BasePruner(pruned, example, importance=tp.importance.MagnitudeImportance(p=1),
                                  pruning_ratio=ratio, ignored_layers=ignored)
    pruner.step()
    return pruned


def filter_prune_to_latency(model: nn.Module, latency_reduction: float, input_size: Sequence[int],
                            latency_kwargs: dict | None = None, steps: int = 6,
                            max_ratio: float = 0.9) -> tuple[nn.Module, float, float]:
    """Bisect the uniform pruning ratio until the pruned model saves ``latency_reduction`` of the measured
    latency. Returns ``(pruned model, ratio, saved fraction)`` for the smallest ratio found that reaches
    the target (the largest tried when none does, with a warning)."""
    if not 0 < latency_reduction < 1:
        raise ValueError(f'latency_reduction is a fraction between 0 and 1 (e.g. 0.25), got {latency_reduction}.')
    kw = {'input_size': input_size}
    kw.update(latency_kwargs or {})
    lo, hi = 0.0, max_ratio
    best: tuple[nn.Module, float, float] | None = None
    fallback: tuple[nn.Module, float, float] | None = None
    ratio = latency_reduction  # channel pruning removes compute roughly quadratically: a fair first guess
    for _ in range(steps):
        pruned = filter_prune(model, ratio, input_size)
        base, after = measure_latencies([model, pruned], **kw)
        saved = 1 - after.median_ms / base.median_ms
        _logger.info('filter pruning ratio %.3f: latency reduced by %.1f%%', ratio, 100 * saved)
        if saved >= latency_reduction:
            best, hi = (pruned, ratio, saved), ratio
        else:
            fallback, lo = (pruned, ratio, saved), ratio
        ratio = (lo + hi) / 2
    if best is None:
        _logger.warning('Filter pruning up to ratio %.2f saved only %.1f%%, short of %.0f%%.',
                        fallback[1], 100 * fallback[2], 100 * latency_reduction)
        return fallback
    return best
