"""Losses of BatchNorm-statistic inversion (DeepInversion, Yin et al. CVPR 2020).

Everything returns per-image values where the quantity is defined per image, so the optimiser can
keep the best snapshot of each image; the BatchNorm term is a batch statistic and is shared.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ['BatchNormStatHooks', 'batchnorm_layers', 'image_priors', 'pixel_stats_loss', 'competition_loss']


def batchnorm_layers(model: nn.Module, required: bool = False) -> List[Tuple[str, _BatchNorm]]:
    """BatchNorm layers (any ``_BatchNorm``: nn.BatchNorm2d, timm's BatchNormAct2d, ...) that keep running
    statistics, in forward-definition order. ``required``: a model without any is refused with a ValueError
    that names the alternatives (BatchNorm-statistic inversion has nothing to match)."""
    layers = [(n, m) for n, m in model.named_modules()
              if isinstance(m, _BatchNorm) and m.track_running_stats and m.running_mean is not None]
    if required and not layers:
        raise ValueError(
            f"{type(model).__name__} has no BatchNorm layer with running statistics, so BatchNorm-statistic "
            "inversion has nothing to match. Use out-of-domain images instead: a local folder, a saved "
            "Hugging Face dataset, or crops of a single photo (synth.load_images('crops:photo.jpg', ...), "
            "the `practise-df` OOD sources).")
    return layers


class BatchNormStatHooks:
    """Forward hooks that compare the statistics entering every BatchNorm layer with its running
    statistics: ``||mu - mu_run||_2 + ||var - var_run||_2`` per layer (DeepInversion's ``r_feature``).
    Use as a context manager so the hooks never outlive the optimisation.

    By default ``mu`` and ``var`` are those of the batch just run. With :meth:`set_part` they are those of
    a whole set run in parts (Sony MCT's data generation): the part just run, with gradients, pooled with
    the last statistics of the other parts, without. A set larger than one forward pass then matches as
    a set, and single images need not each carry the statistics of the whole data set.

    ``first_multiplier`` scales the first layer's term (DeepInversion uses 10: the stem statistics fix
    colour and contrast of the whole image).
    """

    def __init__(self, model: nn.Module, first_multiplier: float = 1.0):
        self.layers = batchnorm_layers(model, required=True)
        self.first_multiplier = first_multiplier
        self._losses: List[torch.Tensor] = []
        self._handles = []
        self._part: Optional[int] = None
        self._sums: Dict[Tuple[int, int], Tuple[torch.Tensor, torch.Tensor, int]] = {}  # (layer, part) -> detached

    def set_part(self, part: Optional[int]) -> None:
        """The next forward pass is part ``part`` of a set (None: a batch on its own)."""
        self._part = part

    def __enter__(self) -> 'BatchNormStatHooks':
        self._handles = [m.register_forward_hook(self._hook) for _, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._losses = []
        self._sums = {}

    def _hook(self, module: _BatchNorm, inputs, output) -> None:
        x = inputs[0].float()  # statistics in fp32 even under autocast
        dims = [d for d in range(x.dim()) if d != 1]
        count = x.numel() // x.shape[1]
        total, total_sq = x.sum(dims), x.pow(2).sum(dims)
        if self._part is not None:  # pool with the other parts of the set (no gradient through them)
            layer = len(self._losses)
            own = (total.detach(), total_sq.detach(), count)
            for (other_layer, part), (s, q, n) in self._sums.items():
                if other_layer == layer and part != self._part:
                    total, total_sq, count = total + s, total_sq + q, count + n
            self._sums[(layer, self._part)] = own
        mean = total / count
        var = (total_sq / count - mean.pow(2)).clamp_min(0)
        self._losses.append(torch.norm(module.running_mean - mean, 2) + torch.norm(module.running_var - var, 2))

    def pop(self) -> torch.Tensor:
        """Weighted sum of the terms recorded since the last call (one per BatchNorm layer)."""
        if not self._losses:
            raise RuntimeError('No BatchNorm layer ran since the last call; did the forward pass run inside '
                               'the hook context?')
        losses, self._losses = self._losses, []
        total = losses[0] * self.first_multiplier
        if len(losses) > 1:
            total = total + torch.stack(losses[1:]).sum()
        return total


def image_priors(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-image squared total variation (4 neighbour directions, as DeepInversion) and squared L2 norm.

    Squared values are returned so the batch norm DeepInversion optimises, ``sqrt(sum_i v_i)``, and the
    per-image norm, ``sqrt(v_i)``, both follow from them.
    """
    d1 = x[:, :, :, :-1] - x[:, :, :, 1:]
    d2 = x[:, :, :-1, :] - x[:, :, 1:, :]
    d3 = x[:, :, 1:, :-1] - x[:, :, :-1, 1:]
    d4 = x[:, :, :-1, :-1] - x[:, :, 1:, 1:]
    tv_sq = sum(d.pow(2).flatten(1).sum(1) for d in (d1, d2, d3, d4))
    return tv_sq, x.pow(2).flatten(1).sum(1)


def pixel_stats_loss(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``||mu - mean||_2 + ||sigma - std||_2`` of the per-channel pixel statistics of ``images`` (B, C, H, W,
    in [0, 1]) against natural-image statistics: the image itself treated as one more BatchNorm input
    (Sony MCT matches it too), which keeps the colour balance of synthesized images natural."""
    dims = [0, 2, 3]
    return torch.norm(images.mean(dims) - mean, 2) + torch.norm(images.std(dims, unbiased=False) - std, 2)


def competition_loss(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                     temperature: float = 3.0) -> torch.Tensor:
    """Adaptive DeepInversion's competition term, per image: ``1 - JS(teacher || student)``.

    Minimising it maximises the Jensen-Shannon divergence, i.e. pushes images to where the student
    still disagrees with the teacher. Probabilities are clamped to [0.01, 0.99] as in the reference.
    """
    p = F.softmax(student_logits.float() / temperature, dim=1)
    q = F.softmax(teacher_logits.float() / temperature, dim=1)
    m = (0.5 * (p + q)).clamp(0.01, 0.99)
    p, q = p.clamp(0.01, 0.99), q.clamp(0.01, 0.99)
    # KL(m || p) summed over classes, as nn.KLDivLoss(log p, m) in the reference.
    js = 0.5 * (m * (m.log() - p.log())).sum(1) + 0.5 * (m * (m.log() - q.log())).sum(1)
    return 1.0 - js.clamp(0.0, 1.0)
