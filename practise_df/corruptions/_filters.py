"""Shared by the corruptions: Gaussian, FFT and motion blurs, the defocus disk, zooms, size scaling, CPU blocks."""
from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

# ImageNet-C is defined at 224 px and the reference uses most of its parameters in pixels whatever the image size.
# Parameters given in pixels (defocus radius, glass-blur sigma and shuffle distance, motion-blur radius and sigma,
# snow flake zoom and streak length, frost texture scale) are multiplied by min(H, W) / 224 (integer ones rounded, at
# least 1), so a corruption covers the same fraction of the image at any size, and at 224 px they are the reference's.
# Those the reference ties to the image size keep its formula: elastic (sigma and maximum displacement from H and W),
# fog (fractal map of the next power of two of the larger side). Per-pixel noise, brightness, contrast, pixelate (a
# fraction of the size) and JPEG quality do not depend on it.
REFERENCE_SIZE = 224


def _size_scale(x: Tensor) -> float:
    return min(x.shape[-2:]) / REFERENCE_SIZE


def _scaled(value: float, s: float, integer: bool = False):
    """A parameter given in pixels at 224 px, at scale ``s``; exact at s == 1."""
    if s == 1:
        return value
    return max(1, round(value * s)) if integer else value * s


# Images per block for the CPU filters: a block's working set stays in cache, ~3x faster than whole batches of 64.
# corrupt's chunks of 8 images (the unit of random draws) are split again: on blocks of 8 the FFT filter of defocus
# blur is ~1.4x slower and zoom blur ~1.1x (same outputs).
_BLOCK = 4


def _blocks(fn, x: Tensor, size: int = _BLOCK) -> Tensor:
    """``fn(x)`` on blocks of ``size`` images in turn on the CPU, on the whole batch elsewhere."""
    if x.device.type != 'cpu' or x.shape[0] <= size:
        return fn(x)
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def _border_index(index: Tensor, n: int, border: str) -> Tensor:
    """Indices outside [0, n) mapped inside: 'replicate' (scipy 'nearest'), 'reflect101' (cv2 default, torch
    'reflect', scipy 'mirror') or 'symmetric' (scipy 'reflect': the edge pixel repeated)."""
    if border == 'replicate':
        return index.clamp(0, n - 1)
    if border == 'reflect101':
        index = index.abs()
        return torch.where(index > n - 1, 2 * (n - 1) - index, index)
    index = torch.where(index < 0, -index - 1, index)
    return torch.where(index > n - 1, 2 * n - 1 - index, index)


def _blur_axis(x: Tensor, sigma: float, truncate: float, border: str, dim: int) -> Tensor:
    """A 1-D Gaussian filter along ``dim`` (scipy: radius ``int(truncate * sigma + 0.5)``) with its border, as a
    sum of shifted slices of the border-padded tensor (kornia's kernel)."""
    radius = int(truncate * sigma + 0.5)
    kernel = kornia.filters.get_gaussian_kernel1d(2 * radius + 1, float(sigma)).flatten().tolist()
    n = x.shape[dim]
    padded = x.index_select(dim, _border_index(torch.arange(-radius, n + radius, device=x.device), n, border))
    out = padded.narrow(dim, 0, n) * kernel[0]
    for t in range(1, 2 * radius + 1):
        out.add_(padded.narrow(dim, t, n), alpha=kernel[t])
    return out


def _gaussian(x: Tensor, sigma, truncate: float, border: str) -> Tensor:
    """scikit-image / scipy ``gaussian`` (sigma, or (sigma_y, sigma_x)) of every channel: the separable filter
    along each axis. kornia.filters.gaussian_blur2d gives the same numbers but is a depthwise convolution, 3-4x
    slower on the CPU (and (n, n) matrix products, 5x slower for the 7-15 taps used here)."""
    sy, sx = sigma if isinstance(sigma, tuple) else (sigma, sigma)
    return _blocks(lambda b: _blur_axis(_blur_axis(b, sy, truncate, border, -2), sx, truncate, border, -1), x)


def _motion_blur(x: Tensor, radius: int, sigma: float, angle: Tensor, batched: bool | None = None) -> Tensor:
    """The reference ``_motion_blur``: a one-sided half-Gaussian streak of ``2 * radius + 1`` taps at
    ``angle`` degrees (one per image), pixels beyond the border replicated. kornia.filters.motion_blur
    has a uniform (or linearly ramped) line kernel, not this one, so the kernel is built here.
    ``batched`` (default: off the CPU) sums the taps for all images at once, else image by image."""
    n, _, h, w = x.shape
    width = 2 * radius + 1
    i = torch.arange(width, dtype=torch.float64)
    kernel = torch.exp(-i ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    rad = torch.deg2rad(angle.cpu().to(torch.float64))
    # the reference: dy = -ceil(i * sin(a) - 0.5), then shift(image, dx, dy) reads image[y - dy, x - dx]
    dy = torch.ceil(i[None, :] * torch.sin(rad)[:, None] - 0.5).long()
    dx = torch.ceil(i[None, :] * torch.cos(rad)[:, None] - 0.5).long()
    # the reference stops at the first shift as large as the image (and does not rescale the kernel)
    inside = ((dy.abs() < h) & (dx.abs() < w)).long().cumprod(1).bool()
    pad = int(max(dy[inside].abs().max(), dx[inside].abs().max()))
    if batched is None:
        batched = x.device.type != 'cpu'
    if batched:
        # taps past the first too-large shift get weight 0 and shift 0 (their offsets may leave the padding)
        return _shifted_sum(x, pad, dy * inside, dx * inside, inside * kernel)
    dy, dx, inside, kernel = dy.tolist(), dx.tolist(), inside.tolist(), kernel.tolist()
    # A different kernel per image: per image, a sum of shifted views. Exact, and on the CPU ~10x faster than a
    # batched gather or a dense (4 radius + 1)^2 convolution (an image stays in cache through all its taps).
    out = torch.empty_like(x)
    for m in range(n):
        padded = F.pad(x[m:m + 1], (pad, pad, pad, pad), mode='replicate')[0]
        acc = out[m].zero_()
        for t in range(width):
            if inside[m][t]:
                top, left = pad + dy[m][t], pad + dx[m][t]
                acc.add_(padded[:, top:top + h, left:left + w], alpha=kernel[t])
    return out


def _shifted_sum(x: Tensor, pad: int, dy: Tensor, dx: Tensor, weight: Tensor) -> Tensor:
    """``sum_t weight[m, t] * x[m]`` shifted by ``(dy[m, t], dx[m, t])``, borders replicated, for all images at once:
    one gather per tap (the GPU path of :func:`_motion_blur`; a loop over images would launch ~n x taps kernels)."""
    n, ch, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode='replicate')
    dy, dx, weight = dy.to(x.device), dx.to(x.device), weight.to(x.device, x.dtype)
    image = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    channel = torch.arange(ch, device=x.device).view(1, ch, 1, 1)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    out = torch.zeros_like(x)
    for t in range(dy.shape[1]):
        top, left = (pad + dy[:, t]).view(n, 1, 1, 1), (pad + dx[:, t]).view(n, 1, 1, 1)
        out += weight[:, t].view(n, 1, 1, 1) * padded[image, channel, top + rows.view(1, 1, h, 1),
                                                      left + cols.view(1, 1, 1, w)]
    return out


def _clipped_zoom(x: Tensor, zoom: float) -> Tensor:
    """The reference ``clipped_zoom``: centre crop of ceil(size / zoom), scipy ``zoom(order=1)`` (corner-aligned
    bilinear to round(crop * zoom) pixels). Not cropped back to the input size (callers take [:H, :W])."""
    h, w = x.shape[-2:]
    ch, cw = math.ceil(h / zoom), math.ceil(w / zoom)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = x[..., top:top + ch, left:left + cw]
    size = (round(ch * zoom), round(cw * zoom))
    if size == (ch, cw):
        return crop
    return F.interpolate(crop, size=size, mode='bilinear', align_corners=True)


def _arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange's values (the reference's zoom factors), without numpy."""
    return [start + i * step for i in range(math.ceil((stop - start) / step))]


def _disk(radius: float, alias_blur: float, s: float, device, dtype) -> Tensor:
    """The reference ``disk`` kernel: an aliased disk, normalised, then a small Gaussian (cv2.GaussianBlur,
    border reflect-101) to antialias it."""
    half = max(2, math.ceil(8 * s) if radius <= 8 * s else math.ceil(radius))
    ksize = 3 if radius <= 8 * s else 5
    coords = torch.arange(-half, half + 1, dtype=torch.float64)
    disk = ((coords[None, :] ** 2 + coords[:, None] ** 2) <= radius ** 2).to(torch.float64)
    disk = disk / disk.sum()
    blurred = kornia.filters.gaussian_blur2d(disk[None, None], (ksize, ksize), (alias_blur, alias_blur),
                                             border_type='reflect')
    return blurred[0, 0].to(device, dtype)


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """cv2.filter2D of every channel by one kernel (correlation, border reflect-101) through the FFT: the result
    of kornia.filters.filter2d(border_type='reflect') up to float rounding, ~10x faster on the CPU for 17x17 to
    21x21 kernels."""
    from scipy.fft import next_fast_len  # scikit-image's dependency; loaded only when a filter runs
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    size = (next_fast_len(h + kh - 1, real=True), next_fast_len(w + kw - 1, real=True))  # no prime factor above 5
    kpad = torch.zeros(size, device=x.device, dtype=x.dtype)
    kpad[:kh, :kw] = kernel.flip(0, 1)  # correlation = convolution with the flipped kernel
    spectrum = torch.fft.rfft2(kpad)

    def block(b: Tensor) -> Tensor:
        padded = F.pad(b, (kw // 2, kw // 2, kh // 2, kh // 2), mode='reflect')
        out = torch.fft.irfft2(torch.fft.rfft2(padded, s=size) * spectrum, s=size)
        # linear convolution of the padded image: output (y, x) of the valid part sits at (y + kh - 1, x + kw - 1)
        return out[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]
    return _blocks(block, x)

