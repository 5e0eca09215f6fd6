"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), batched and on the images' device.

``corrupt(images, name, severity, generator)`` corrupts float images in [0, 1] of shape (N, 3, H, W) with the
parameters per severity of the reference implementation, the ``imagecorruptions`` package (``imagecorruptions-imaug``
1.1.5, one uint8 numpy image at a time). :data:`APPROXIMATIONS` says where an operation differs from the reference
and why; :data:`FAITHFUL` names the corruptions whose top-1 accuracy of tf_efficientnet_lite0 is within 2 points of
the reference's (``benchmarks/bench_corruptions.py``). Parameters the reference gives in pixels scale with
min(H, W) / 224 (``_filters.py`` says which). One module per family (noise, blur, weather, digital); in each,
``sample_<name>_params(x, severity, generator)`` draws a random corruption's parameters (frost's also takes the
photo folder, :data:`FROST_DIR`) and ``<name>(x, severity, **params)`` is the deterministic operation.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import torch
from torch import Tensor

from ._filters import REFERENCE_SIZE as REFERENCE_SIZE, _blocks
from .blur import defocus_blur, glass_blur, motion_blur, sample_glass_blur_params, sample_motion_blur_params, zoom_blur
from .digital import contrast, elastic_transform, jpeg_compression, pixelate, sample_elastic_transform_params
from .noise import (gaussian_noise, impulse_noise, sample_gaussian_noise_params, sample_impulse_noise_params,
                    sample_shot_noise_params, shot_noise)
from .weather import (_find_frost_dir, brightness, fog, frost, sample_fog_params, sample_frost_params,
                      sample_snow_params, snow)

__all__ = ['APPROXIMATIONS', 'CORRUPTIONS', 'FAITHFUL', 'SEVERITIES', 'corrupt', 'frost_source',
           'parse_corruptions', 'parse_severities']

CORRUPTIONS: tuple[str, ...] = (
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'frost', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression')
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
GROUPS: dict[str, tuple[str, ...]] = {'noise': CORRUPTIONS[0:3], 'blur': CORRUPTIONS[3:7],
                                      'weather': CORRUPTIONS[7:11], 'digital': CORRUPTIONS[11:15]}

#: Corruptions whose top-1 (tf_efficientnet_lite0, 160 ImageNet images, mean of severities 1-5) is within 2 points of
#: the reference's in benchmarks/results/corruptions.md (CPU; random corruptions: means of two draws per side) and
#: corruptions_cuda.md (an H200, one draw). Noise, glass, motion, snow, fog and elastic are the reference's
#: operations with other random numbers (the reference differs from itself by up to 2.5 points when reseeded); the
#: others are the same operations up to float rounding.
FAITHFUL: frozenset = frozenset({
    'gaussian_noise', 'shot_noise', 'impulse_noise', 'defocus_blur', 'glass_blur', 'motion_blur', 'zoom_blur',
    'snow', 'fog', 'brightness', 'contrast', 'elastic_transform', 'pixelate', 'jpeg_compression'})
#: The others, with how they differ from the reference and why.
APPROXIMATIONS: dict[str, str] = {
    'frost': "The reference's frost photos are not shipped: they are read from an installed imagecorruptions "
             "package (same photos and crops, torch's bicubic resize instead of OpenCV's), else replaced by a "
             "procedural ice texture tinted like the photos. Against the reference (mean of two draws per side, "
             "CPU): -0.4 points (photos) and +1.5 (procedural); single draws vary by about 3 points (which photo "
             "each image gets): -1.4 and +1.0 on the CPU, -3.2 and +3.4 on an H200.",
}

#: Folder of the reference's frost photos (``imagecorruptions/frost``) when that package is installed; set it to
#: None to use the procedural frost (the same everywhere, whatever is installed).
FROST_DIR: str | None = _find_frost_dir()


def frost_source() -> str:
    """'imagecorruptions' when frost overlays the reference's photos, 'procedural' when it generates them."""
    return 'imagecorruptions' if FROST_DIR is not None else 'procedural'


def _sample_frost_params(x: Tensor, severity: int, generator) -> dict:
    return sample_frost_params(x, severity, generator, FROST_DIR)  # FROST_DIR as set on this package now


_OPS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression)}
assert tuple(_OPS) == CORRUPTIONS
# the random corruptions' samplers; the others have no parameters
_SAMPLERS = {'gaussian_noise': sample_gaussian_noise_params, 'shot_noise': sample_shot_noise_params,
             'impulse_noise': sample_impulse_noise_params, 'glass_blur': sample_glass_blur_params,
             'motion_blur': sample_motion_blur_params, 'snow': sample_snow_params, 'frost': _sample_frost_params,
             'fog': sample_fog_params, 'elastic_transform': sample_elastic_transform_params}


def _check_name(name: str) -> None:
    if name not in _OPS:
        close = difflib.get_close_matches(str(name), CORRUPTIONS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"Unknown corruption '{name}'.{hint} Valid: {', '.join(CORRUPTIONS)}.")


def _check_severity(severity) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f'Severity must be an integer in {", ".join(map(str, SEVERITIES))}; got {severity!r}.')


@torch.no_grad()
def corrupt(images: Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> Tensor:
    """Corrupt a batch of images with one ImageNet-C corruption at one severity.

    Args:
        images: float tensor (N, 3, H, W) in [0, 1], H and W at least 32, on any device. float32 and float64 are
            computed in their own precision, float16 / bfloat16 in float32.
        name: one of :data:`CORRUPTIONS`.
        severity: 1 (mild) to 5 (strong).
        generator: source of all randomness (same seed, same output); None uses torch's default generator.

    Returns:
        the corrupted images, same shape, dtype and device, in [0, 1] and on the 8-bit grid (multiples of 1/255)
        like the reference's uint8 output: at severity 5 contrast leaves ~12 grey levels, and dropping the
        rounding would make the corruption milder than ImageNet-C's.
    """
    _check_name(name)
    _check_severity(severity)
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f'Expected images of shape (N, 3, H, W); got {shape}.')
    if not images.is_floating_point():
        raise TypeError(f'Expected float images in [0, 1]; got {images.dtype} (divide uint8 images by 255).')
    if min(images.shape[-2:]) < 32:
        raise ValueError(f'Images must be at least 32x32 pixels, as in the reference; got {tuple(images.shape[-2:])}.')
    if images.shape[0] == 0:
        return images.clone()
    work = images if images.dtype in (torch.float32, torch.float64) else images.float()
    out = _blocks(lambda chunk: _apply(chunk, name, severity, _sample(chunk, name, severity, generator)), work,
                  _CPU_CHUNK)
    return out.to(images.dtype)


# Images per call on the CPU: a chunk's temporaries stay in the CPU's caches, 1.5-3x faster than whole batches of 64.
# Each chunk draws its numbers in turn, so with a CPU generator CUDA images (one call for the whole batch) get the
# CPU's output for batches of up to 8, up to float rounding (tests/test_corruptions.py checks it on a GPU).
_CPU_CHUNK = 8


def _sample(x: Tensor, name: str, severity: int, generator) -> dict:
    """Every random parameter of one corruption for ``x``: from its shape, device and dtype only, but for shot noise
    (whose Poisson counts depend on the values)."""
    return _SAMPLERS[name](x, severity, generator) if name in _SAMPLERS else {}


def _apply(x: Tensor, name: str, severity: int, params: dict) -> Tensor:
    out = _OPS[name](x, severity, **params)  # a new tensor: changed in place below (saves passes)
    out.clamp_(0, 1)
    if name == 'pixelate':  # PIL rounds to 8 bits
        out.mul_(255).round_().div_(255)
    elif name != 'jpeg_compression':  # already 8-bit
        # the reference returns np.uint8(x * 255), which truncates (the epsilon keeps exact levels in float32)
        out.mul_(255).add_(1e-4).floor_().div_(255)
    return out


def parse_corruptions(text: str | Sequence[str] | None) -> list[str]:
    """'all' or None: the 15 corruptions; else a comma list (or a list) of names or of the groups noise, blur,
    weather, digital, in the order given, duplicates dropped. Unknown names raise ValueError listing the valid
    ones."""
    if not isinstance(text, str) and text is not None:
        text = ','.join(map(str, text))
    if text is None or text.strip().lower() in ('', 'all'):
        return list(CORRUPTIONS)
    names: list[str] = []
    for item in text.split(','):
        item = item.strip().lower()
        if not item:
            continue
        if item == 'all' or item in GROUPS:
            names += CORRUPTIONS if item == 'all' else GROUPS[item]
            continue
        if item not in _OPS:
            close = difflib.get_close_matches(item, list(CORRUPTIONS) + list(GROUPS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ''
            raise ValueError(f"Unknown corruption '{item}'.{hint} Valid: all, {', '.join(GROUPS)}, "
                             f"{', '.join(CORRUPTIONS)}.")
        names.append(item)
    return list(dict.fromkeys(names))


def parse_severities(text) -> list[int]:
    """'1,5', '1-5', '1,3-5' (None or 'all': 1-5; an int or a list of ints also work), sorted, unique.
    Severities outside 1-5 raise ValueError listing the valid ones."""
    valid = ', '.join(map(str, SEVERITIES))
    if text is None or (isinstance(text, str) and text.strip().lower() in ('', 'all')):
        return list(SEVERITIES)
    if isinstance(text, (list, tuple)):
        items: Sequence[str] = [str(t) for t in text]
    else:
        items = str(text).split(',')
    found = set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        match = re.fullmatch(r'(\d+)\s*(?:-\s*(\d+))?', item)
        if match is None:
            raise ValueError(f"Cannot read severity '{item}'; valid severities: {valid} (e.g. '1,5' or '1-5').")
        lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
        values = list(range(min(lo, hi), max(lo, hi) + 1))  # '5-2' is the range 2-5
        bad = [v for v in values if v not in SEVERITIES]
        if bad:
            raise ValueError(f'Severity {bad[0]} is out of range; valid severities: {valid}.')
        found.update(values)
    if not found:
        raise ValueError(f"No severity in {text!r}; valid severities: {valid}.")
    return sorted(found)
