"""Optimise a batch of images so a BatchNorm teacher sees its own training statistics (DeepInversion).

One call inverts one batch: Adam on the image (its pixels, or a multi-scale pyramid: synth/param.py), a
cosine schedule per resolution phase, fresh kornia augmentations every step, pixels clamped to the valid
range after every step, and the lowest-loss snapshot of each image of the final-resolution phase kept.
:func:`synth.synthesize` splits a data set into such batches and writes them to disk.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .augment import build_augmentation
from .losses import BatchNormStatHooks, competition_loss, image_priors, pixel_stats_loss
from .param import image_parametrization
from .presets import InversionConfig

__all__ = ['InversionResult', 'invert_batch', 'evaluate_images', 'pixel_bounds', 'quantize']


@dataclass
class InversionResult:
    images: torch.Tensor  # (B, C, H, W), normalised like the teacher's inputs, on CPU
    targets: torch.Tensor  # (B,)
    best_loss: torch.Tensor  # (B,) per-image total loss of the kept snapshot
    teacher_passes: int  # images forwarded through the teacher (steps x batch)
    history: Dict[str, List[float]] = field(default_factory=dict)  # per-step 'loss', 'bn', 'ce'


def pixel_bounds(mean: Sequence[float], std: Sequence[float], device=None):
    """Normalised values of pixel 0 and pixel 1 per channel, shaped (1, C, 1, 1)."""
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def quantize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
    """8-bit pixels of normalised images, and the normalised images those pixels decode to (what a reader
    of the saved PNG gets)."""
    m = torch.tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    pixels = (images.float() * s + m).clamp(0, 1).mul(255).round().to(torch.uint8)
    return pixels, (pixels.float() / 255 - m) / s


@contextlib.contextmanager
def _frozen(*models: Optional[nn.Module]) -> Iterator[None]:
    """Eval mode and no parameter gradients for the duration; the models' previous state is restored."""
    models = [m for m in models if m is not None]
    saved = [(m.training, [p.requires_grad for p in m.parameters()]) for m in models]
    try:
        for m in models:
            m.eval().requires_grad_(False)
        yield
    finally:
        for m, (training, flags) in zip(models, saved):
            m.train(training)
            for p, flag in zip(m.parameters(), flags):
                p.requires_grad_(flag)


def _init_images(config: InversionConfig, shape, mean, std, device) -> torch.Tensor:
    if config.init == 'randn':  # DeepInversion: white noise in normalised space
        return torch.randn(shape, device=device)
    if config.init == 'smooth':
        # Equal energy per octave (a 1/f spectrum, like natural images), around natural pixel mean/std, so
        # the early BatchNorm layers start near their running statistics instead of far above them.
        b, c, h, w = shape
        noise = torch.zeros(shape, device=device)
        size = 4
        while size <= max(h, w):
            noise += F.interpolate(torch.randn(b, c, size, size, device=device), size=(h, w), mode='bilinear',
                                   align_corners=False)
            size *= 2
        noise = (noise - noise.mean((2, 3), keepdim=True)) / noise.std((2, 3), keepdim=True).clamp_min(1e-6)
        m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        s = torch.tensor(std, device=device).view(1, -1, 1, 1)
        return ((0.45 + 0.22 * noise).clamp(0, 1) - m) / s
    raise ValueError(f"Unknown init '{config.init}'; use 'randn' or 'smooth'.")


def _cosine_with_warmup(warmup: int, steps: int) -> Callable[[int], float]:
    """DeepInversion's ``lr_cosine_policy``: linear warm-up, then cosine decay to zero."""
    warmup = min(warmup, max(steps - 1, 1))

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (i - warmup) / max(steps - warmup, 1)))
    return factor


def _parts(batch: int, micro_batch: Optional[int]) -> List[slice]:
    """The slices of a batch run one forward pass each (the whole batch when ``micro_batch`` is None)."""
    step = batch if not micro_batch else max(1, micro_batch)
    return [slice(i, min(batch, i + step)) for i in range(0, batch, step)]


def _autocast_dtype(device: torch.device, amp: Optional[bool]) -> Optional[torch.dtype]:
    if amp is None:
        amp = device.type == 'cuda'  # on CPU, autocast is slower than fp32 for these models
    if not amp:
        return None
    if device.type == 'cuda':
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def invert_batch(
        model: nn.Module,
        targets: torch.Tensor,
        config: InversionConfig,
        *,
        resolution: int,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        student: Optional[nn.Module] = None,
        device: Optional[torch.device] = None,
        amp: Optional[bool] = None,
        on_step: Optional[Callable[[int], None]] = None,
) -> InversionResult:
    """Synthesise ``len(targets)`` images of the teacher's classes ``targets``.

    Args:
        model: the teacher; BatchNorm layers with running statistics are required. Its mode and
            ``requires_grad`` flags are restored afterwards.
        targets: class indices, any length (the batch size).
        config: loss weights, schedule and augmentation (see :data:`synth.PRESETS`).
        resolution: final square resolution; phases run at fractions of it.
        mean, std: the teacher's input normalisation (its data config).
        seed: makes the initial noise and every augmentation draw reproducible.
        student: optional student for Adaptive DeepInversion's competition term.
        device: where to optimise (default: the teacher's device).
        amp: autocast (default: on for CUDA, off on CPU).
        on_step: called with the global step index after every step (progress bars).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    targets = targets.to(device=device, dtype=torch.long)
    batch = len(targets)
    if batch == 0:
        raise ValueError('invert_batch needs at least one target.')
    lo, hi = pixel_bounds(mean, std, device)
    dtype = _autocast_dtype(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fork_devices = [device] if device.type == 'cuda' else []
    history: Dict[str, List[torch.Tensor]] = {'loss': [], 'bn': [], 'ce': []}
    passes, global_step = 0, 0
    pad = int(round(config.canvas * resolution))
    size_full = resolution + pad
    parts = _parts(batch, config.micro_batch)
    m_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
    natural = (torch.tensor(config.pixel_mean[:len(mean)], device=device),
               torch.tensor(config.pixel_std[:len(mean)], device=device))

    with _frozen(model, student), BatchNormStatHooks(model, config.first_bn_multiplier) as bn_hooks, \
            torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(seed)
        init = _init_images(config, (batch, len(mean), size_full, size_full), mean, std, device)
        image = image_parametrization(config.param, torch.max(torch.min(init, hi), lo))
        best = image().detach().clone()
        best_loss = torch.full((batch,), float('inf'), device=device)
        for phase, (fraction, steps) in enumerate(config.phases):
            final_phase = phase == len(config.phases) - 1
            size = max(8, int(round(resolution * fraction)))
            augment = build_augmentation(config, size, mean, std).to(device)
            # A fresh optimiser per phase, as the reference: the moments of the low-resolution phase
            # describe other gradients.
            optimizer = torch.optim.Adam(image.parameters(), lr=config.lr, betas=config.betas, eps=1e-8)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _cosine_with_warmup(config.warmup, steps))
            for _ in range(steps):
                x = image()
                if pad:  # one random crop of the canvas per step for the whole batch, as MCT
                    dy, dx = torch.randint(0, pad + 1, (2,)).tolist()
                    x_view = x[..., dy:dy + resolution, dx:dx + resolution]
                else:
                    x_view = x
                view = x_view if size == resolution else F.adaptive_avg_pool2d(x_view, size)
                optimizer.zero_grad(set_to_none=True)
                step_loss, step_bn, step_ce, per_image = 0.0, 0.0, 0.0, []
                for k, part in enumerate(parts):
                    bn_hooks.set_part(k if len(parts) > 1 else None)
                    part_view = augment(view[part])
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        logits = model(part_view)
                        bn = bn_hooks.pop()
                        student_logits = student(part_view) if student is not None else None
                    passes += len(part_view)
                    share = len(part_view) / batch  # the parts add up to the loss of the whole batch
                    ce = F.cross_entropy(logits.float(), targets[part], reduction='none')
                    tv_sq, l2_sq = image_priors(part_view.float())
                    loss = (config.ce * ce.mean() + config.bn * bn) * share + \
                        config.tv_l2 * tv_sq.sum().sqrt() * share ** 0.5 + config.l2 * l2_sq.sqrt().mean() * share
                    part_image = (config.ce * ce + config.bn * bn + config.tv_l2 * tv_sq.sqrt()
                                  + config.l2 * l2_sq.sqrt())
                    if config.pixel_stats:  # a statistic of the set, shared by its images as the BatchNorm term
                        pixel = config.pixel_stats * pixel_stats_loss(part_view.float() * s_t + m_t, *natural)
                        loss, part_image = loss + pixel * share, part_image + pixel.detach()
                    if student_logits is not None:
                        comp = competition_loss(logits, student_logits)
                        loss = loss + config.competition * comp.mean() * share
                        part_image = part_image + config.competition * comp
                    scaler.scale(loss).backward(retain_graph=k < len(parts) - 1)
                    per_image.append(part_image.detach())
                    step_loss, step_bn, step_ce = step_loss + loss.detach(), step_bn + bn.detach() * share, \
                        step_ce + ce.detach().mean() * share
                if final_phase:  # the loss was measured on x before this step's update
                    per_image = torch.cat(per_image)
                    better = per_image < best_loss
                    best_loss = torch.where(better, per_image, best_loss)
                    best[better] = x.detach()[better]
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                image.project(lo, hi)  # pixels stay in the valid range after every step
                history['loss'].append(step_loss)
                history['bn'].append(step_bn)
                history['ce'].append(step_ce)
                global_step += 1
                if on_step is not None:
                    on_step(global_step)
    if pad:  # the saved image is the centre of the canvas
        best = best[..., pad // 2:pad // 2 + resolution, pad // 2:pad // 2 + resolution]

    return InversionResult(images=best.cpu(), targets=targets.cpu(), best_loss=best_loss.cpu(),
                           teacher_passes=passes,
                           history={k: torch.stack(v).float().cpu().tolist() if v else [] for k, v in history.items()})


@torch.no_grad()
def evaluate_images(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                    device: Optional[torch.device] = None) -> Dict[str, torch.Tensor]:
    """Clean (unaugmented) teacher view of finished images: probability and top-1 of the target, the
    BatchNorm-statistic loss of the batch (unweighted sum over layers) and per-image priors."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    images, targets = images.to(device), targets.to(device=device, dtype=torch.long)
    with _frozen(model), BatchNormStatHooks(model, first_multiplier=1.0) as bn_hooks:
        logits = model(images).float()
        bn = bn_hooks.pop()
    probs = logits.softmax(1)
    tv_sq, l2_sq = image_priors(images.float())
    return {
        'prob': probs.gather(1, targets[:, None])[:, 0].cpu(),
        'correct': (logits.argmax(1) == targets).cpu(),
        'ce': F.cross_entropy(logits, targets, reduction='none').cpu(),
        'bn': bn.cpu(),
        'tv': tv_sq.sqrt().cpu(),
        'l2': l2_sq.sqrt().cpu(),
    }
