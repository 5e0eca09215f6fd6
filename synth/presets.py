"""Inversion settings: DeepInversion's published ImageNet settings (``reference``) and our ``fast`` defaults.

A schedule is a list of phases ``(resolution fraction, steps)``: the pixels are always optimised at the
final resolution, and a phase with fraction 0.5 shows the teacher an area-downsampled copy (DeepInversion's
multi-resolution setting: 2k steps at 112 px, then 1k at 224 px). Asking for another number of steps
or another resolution scales every phase proportionally, so the schedule keeps its shape.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Optional, Tuple

__all__ = ['InversionConfig', 'PRESETS', 'get_preset']


@dataclass(frozen=True)
class InversionConfig:
    """Every knob of :func:`synth.invert_batch`. Loss weights follow DeepInversion's naming."""
    phases: Tuple[Tuple[float, int], ...] = ((0.5, 2000), (1.0, 1000))
    lr: float = 0.25
    betas: Tuple[float, float] = (0.5, 0.9)
    warmup: int = 100  # linear warm-up steps at the start of each phase, then cosine decay
    bn: float = 0.01  # BatchNorm-statistic term ("r_feature")
    first_bn_multiplier: float = 10.0
    ce: float = 1.0  # cross-entropy toward the target class ("main_loss_multiplier")
    tv_l2: float = 1e-4
    l2: float = 1e-5
    competition: float = 0.2  # Adaptive DeepInversion term, used only when a student is given
    # Augmentation, redrawn every step. Jitter is a fraction of the phase resolution (30 px at 224 px).
    jitter: float = 30 / 224
    flip: float = 0.5
    crop_scale: Optional[Tuple[float, float]] = None  # kornia RandomResizedCrop area range; None = off
    color_jitter: float = 0.0  # kornia ColorJitter strength; 0 = off
    init: str = 'randn'  # 'randn' (white noise, DeepInversion) or 'smooth' (low-frequency noise)
    param: str = 'pixels'  # 'pixels' (DeepInversion) or 'pyramid' (synth/param.py)
    # Optimise a canvas this fraction larger and show the teacher a random crop of the final size every step
    # (Sony MCT: 256 px for 224); the saved image is the centre crop. 0 = off (DeepInversion's roll jitter).
    canvas: float = 0.0
    # Per-channel pixel mean/std of the images matched to natural-image statistics (MCT treats the image as one
    # more BatchNorm input); keeps the colour balance natural. 0 = off.
    pixel_stats: float = 0.0
    pixel_mean: Tuple[float, float, float] = (0.485, 0.456, 0.406)  # ImageNet's, in [0, 1]
    pixel_std: Tuple[float, float, float] = (0.229, 0.224, 0.225)
    # Images per forward pass; a batch larger than this is optimised in parts whose BatchNorm statistics are
    # pooled (the batch matches as a set, MCT). None = the whole batch in one pass.
    micro_batch: Optional[int] = None

    @property
    def steps(self) -> int:
        """Optimisation steps per batch, over all phases."""
        return sum(steps for _, steps in self.phases)

    @property
    def iterations(self) -> int:  # the name of earlier releases
        warnings.warn('InversionConfig.iterations is deprecated; use InversionConfig.steps.', DeprecationWarning,
                      stacklevel=2)
        return self.steps

    def scaled(self, steps: Optional[int] = None) -> 'InversionConfig':
        """The same schedule with ``steps`` steps in total (each phase at least one step)."""
        if steps is None or steps == self.steps:
            return self
        if steps < len(self.phases):
            raise ValueError(f'{steps} synthesis step(s) are fewer than the {len(self.phases)} resolution phases '
                             f'of this preset; use at least {len(self.phases)}.')
        total = self.steps
        per_phase = [max(1, round(s * steps / total)) for _, s in self.phases]
        per_phase[-1] = steps - sum(per_phase[:-1])  # exact total whatever the rounding
        if per_phase[-1] < 1:
            raise ValueError(f'steps={steps} is too few for the phases {self.phases}.')
        return replace(self, phases=tuple((f, s) for (f, _), s in zip(self.phases, per_phase)),
                       warmup=max(1, round(self.warmup * steps / total)))


PRESETS = {
    # NVlabs/DeepInversion imagenet_inversion.py, setting_id=0 (multi-resolution), ResNet-50v1.5 settings:
    # --lr 0.25 --r_feature 0.01 --first_bn_multiplier 10 --tv_l2 1e-4 --l2 1e-5 --main_loss_multiplier 1
    # --jitter 30 --do_flip, Adam betas (0.5, 0.9), cosine policy with 100 warm-up steps per phase.
    'reference': InversionConfig(phases=((0.5, 2000), (1.0, 1000)), warmup=100),
    # Ours: 5x fewer teacher passes (600 steps). The image is a pyramid of upsampled levels (synth/param.py)
    # started from low-frequency noise, so Adam's steps carry natural-image-like energy per octave and the
    # BatchNorm statistics settle early; that allows a 5x lower learning rate (less pixel noise) and half the
    # BatchNorm weight (more room for the class), and half the steps go to the final resolution, where the
    # images are used. Roll jitter is halved; kornia flips as the reference. Tuned on tf_efficientnet_lite0
    # at 128 px (benchmarks/bench_synth.py); kornia random resized crops cost top-1 agreement there and are off.
    'fast': InversionConfig(phases=((0.5, 300), (1.0, 300)), lr=0.05, warmup=24, bn=0.005,
                            jitter=16 / 224, init='smooth', param='pyramid'),
    # 'fast' with Sony MCT's canvas (random 224 px crops of a 256 px canvas instead of the roll jitter) and a
    # prior matching the pixel statistics to natural images (the fast images have a violet cast). Candidate,
    # measured in BENCHMARKS.md (issue 14).
    'natural': InversionConfig(phases=((0.5, 300), (1.0, 300)), lr=0.05, warmup=24, bn=0.005, jitter=0.0,
                               canvas=32 / 224, pixel_stats=10.0, init='smooth', param='pyramid'),
}


def get_preset(name: str, steps: Optional[int] = None, iterations: Optional[int] = None) -> InversionConfig:
    """The preset ``name``, scaled to ``steps`` per batch (``iterations``: the deprecated name of ``steps``)."""
    if iterations is not None:
        warnings.warn('get_preset(iterations=...) is deprecated; use steps=.', DeprecationWarning, stacklevel=2)
        steps = iterations if steps is None else steps
    if name not in PRESETS:
        raise ValueError(f"Unknown synthesis preset '{name}'; choose one of {sorted(PRESETS)}.")
    return PRESETS[name].scaled(steps)
