"""The 15 ImageNet-C corruptions (Hendrycks & Dietterich, ICLR 2019), batched and on the images' device.

``corrupt(images, name, severity, generator)`` takes float images in [0, 1] of shape (N, 3, H, W) and
corrupts the whole batch with torch / kornia ops. The parameters per severity are those of the
reference implementation, the ``imagecorruptions`` package (``imagecorruptions-imaug`` 1.1.5), which
works on one uint8 numpy image at a time. :data:`APPROXIMATIONS` says where an operation differs from
the reference and why; :data:`FAITHFUL` names the corruptions whose top-1 accuracy of
tf_efficientnet_lite0 is within 2 points of the reference's (``benchmarks/bench_corruptions.py``).

Image size. ImageNet-C is defined at 224 px and the reference uses most of its parameters in pixels
whatever the image size. Here parameters given in pixels (defocus radius, glass-blur sigma and
shuffle distance, motion-blur radius and sigma, snow flake zoom and streak length, frost texture
scale) are multiplied by ``min(H, W) / 224`` (integer ones rounded, at least 1), so a corruption
covers the same fraction of the image at any input size, and at 224 px they are the reference's.
Those the reference already ties to the image size keep its formula: elastic (sigma and maximum
displacement from H and W), fog (fractal map of the next power of two of the larger side). Per-pixel
noise, brightness, contrast, pixelate (a fraction of the size) and JPEG quality do not depend on it.

Randomness comes only from ``generator`` (the same seed gives the same output on the same device).
Random numbers are drawn on the generator's device and moved to the images, so a CPU generator also
works for CUDA images (a generator on the images' device is faster). On the CPU a batch is corrupted
in chunks of 8 images, each drawing its own numbers in turn; so a CPU generator gives CUDA images of up
to 8 the CPU's output, up to float rounding (``tests/test_corruptions.py`` checks it on a GPU). The
outputs lie on the 8-bit grid, as the reference's uint8 images do.

Frost overlays photos of frost in the reference. They are not shipped here: when the
``imagecorruptions`` package is installed its six photos are loaded from it (:data:`FROST_DIR`),
otherwise, or when ``FROST_DIR`` is set to None, a procedural ice texture is generated;
:func:`frost_source` says which one a run used.
"""
from __future__ import annotations

import difflib
import importlib.util
import math
import os
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

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

REFERENCE_SIZE = 224


# ----------------------------------------------------------------------------------------------- randomness

def _source(gen: torch.Generator | None, device: torch.device) -> torch.device:
    return gen.device if gen is not None else device


def _rand(shape, gen, device, dtype=torch.float32) -> Tensor:
    return torch.rand(shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _randn(shape, gen, device, dtype=torch.float32) -> Tensor:
    return torch.randn(shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _randint(low: int, high: int, shape, gen, device, dtype=torch.int64) -> Tensor:
    return torch.randint(low, high, shape, generator=gen, device=_source(gen, device), dtype=dtype).to(device)


def _uniform(low: float, high: float, shape, gen, device, dtype=torch.float32) -> Tensor:
    return _rand(shape, gen, device, dtype) * (high - low) + low


# ----------------------------------------------------------------------------------------------- helpers

# Images per block for the CPU: a block's working set stays in cache, ~3x faster than whole batches of 64.
_BLOCK = 4


def _blocks(fn, x: Tensor, *per_image: Tensor) -> Tensor:
    """``fn(x, *per_image)`` on blocks of images on the CPU, on the whole batch elsewhere (no randomness in fn)."""
    if x.device.type != 'cpu' or x.shape[0] <= _BLOCK:
        return fn(x, *per_image)
    return torch.cat([fn(x[i:i + _BLOCK], *(t[i:i + _BLOCK] for t in per_image))
                      for i in range(0, x.shape[0], _BLOCK)])


def _scaled(value: float, s: float, integer: bool = False):
    """A parameter given in pixels at 224 px, at scale ``s``; exact at s == 1."""
    if s == 1:
        return value
    return max(1, round(value * s)) if integer else value * s


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


# ----------------------------------------------------------------------------------------------- noise

def gaussian_noise(x: Tensor, severity: int, gen) -> Tensor:
    c = [.08, .12, 0.18, 0.26, 0.38][severity - 1]
    return _randn(x.shape, gen, x.device, x.dtype).mul_(c).add_(x)


_poisson_tables: dict[tuple, tuple[Tensor, Tensor]] = {}


def _poisson_alias(c: int, device) -> tuple[Tensor, Tensor]:
    """Walker's alias tables (Vose's construction, float64) of Poisson(c * k / 255) for the 8-bit levels k, each
    (256, n): for level k and v uniform in [0, n), column j = floor(v) gives the count j if v < threshold[k, j],
    else j + jump[k, j]."""
    key = (c, str(device))
    if key not in _poisson_tables:
        rates = torch.arange(256, dtype=torch.float64)[:, None] * (c / 255)
        # the tail beyond these counts is below 1e-27 for c <= 60, far below the uniforms' resolution (2^-53)
        counts = torch.arange(int(c + 10 * math.sqrt(c) + 25), dtype=torch.float64)
        pmf = torch.exp(torch.special.xlogy(counts, rates) - rates - torch.lgamma(counts + 1))
        n = len(counts)
        keep, alias = [[1.0] * n for _ in range(256)], [list(range(n)) for _ in range(256)]
        for k, q in enumerate((pmf * n).tolist()):
            small, large = [j for j in range(n) if q[j] < 1], [j for j in range(n) if q[j] >= 1]
            while small and large:
                s, big = small.pop(), large.pop()
                keep[k][s], alias[k][s] = q[s], big
                q[big] -= 1 - q[s]
                (small if q[big] < 1 else large).append(big)
        column = torch.arange(n, dtype=torch.float64)
        _poisson_tables[key] = ((torch.tensor(keep, dtype=torch.float64) + column).to(device),
                                (torch.tensor(alias, dtype=torch.float64) - column).to(device))
    return _poisson_tables[key]


def _on_8bit_grid(x: Tensor) -> bool:
    """Whether every value is a level k / 255, k in 0..255 (up to float rounding), as in the reference's images."""
    def offset(b: Tensor) -> Tensor:  # from the nearest level, per image; values outside [0, 1] are off too
        scaled = b * 255
        return scaled.sub_(scaled.clamp(0, 255).round_()).abs_().flatten(1).amax(1)
    return bool(_blocks(offset, x).max() < 1e-4)


def _poisson_8bit(x: Tensor, c: int, gen) -> Tensor:
    """Poisson(c * x) for x on the 8-bit grid, exact in distribution: one float64 uniform per value through the alias
    tables of its level. 3-4x faster than torch.poisson on a CPU thread."""
    threshold, jump = _poisson_alias(c, x.device)
    n = threshold.shape[1]
    out = torch.empty_like(x)
    # image by image, uniforms too: the float64 temporaries stay in cache (whole batches are ~1.7x slower)
    for i, b in enumerate(x):
        # uniforms are at most 1 - 2^-53, and then u * n rounds below n: floor(v) is a column of the row
        v = _rand(b.shape, gen, x.device, torch.float64).mul_(n)
        j = v.floor()
        index = b.mul(255).round_().mul_(n).add(j).long()
        out[i] = j.addcmul_(v.ge_(torch.take(threshold, index)), torch.take(jump, index))
    return out


def shot_noise(x: Tensor, severity: int, gen) -> Tensor:
    c = [60, 25, 12, 5, 3][severity - 1]
    # The reference's images are uint8, so its rates are c * k / 255: numbers drawn on the CPU for such images go
    # through tables, as torch.poisson is slow there. Other devices and values off the 8-bit grid keep torch.poisson.
    if _source(gen, x.device).type == 'cpu' and _on_8bit_grid(x):
        return _poisson_8bit(x, c, gen).div_(c)
    rates = (x * c).to(_source(gen, x.device))
    return torch.poisson(rates, generator=gen).to(x.device) / c


def impulse_noise(x: Tensor, severity: int, gen) -> Tensor:
    c = [.03, .06, .09, 0.17, 0.27][severity - 1]
    # skimage.util.random_noise(mode='s&p', salt_vs_pepper=0.5): each value independently flipped with
    # probability c, to salt or pepper with equal odds; one uniform draw decides both
    u = _rand(x.shape, gen, x.device, x.dtype)
    return torch.where(u < c, (u < c / 2).to(x.dtype), x)


# ----------------------------------------------------------------------------------------------- blur

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


def _fast_size(n: int) -> int:
    """Smallest m >= n with no prime factor above 5 (a fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def _filter(x: Tensor, kernel: Tensor) -> Tensor:
    """cv2.filter2D of every channel by one kernel (correlation, border reflect-101) through the FFT: the result
    of kornia.filters.filter2d(border_type='reflect') up to float rounding, ~10x faster on the CPU for 17x17 to
    21x21 kernels."""
    kh, kw = kernel.shape
    h, w = x.shape[-2:]
    size = (_fast_size(h + kh - 1), _fast_size(w + kw - 1))
    kpad = torch.zeros(size, device=x.device, dtype=x.dtype)
    kpad[:kh, :kw] = kernel.flip(0, 1)  # correlation = convolution with the flipped kernel
    spectrum = torch.fft.rfft2(kpad)

    def block(b: Tensor) -> Tensor:
        padded = F.pad(b, (kw // 2, kw // 2, kh // 2, kh // 2), mode='reflect')
        out = torch.fft.irfft2(torch.fft.rfft2(padded, s=size) * spectrum, s=size)
        # linear convolution of the padded image: output (y, x) of the valid part sits at (y + kh - 1, x + kw - 1)
        return out[..., kh - 1:kh - 1 + h, kw - 1:kw - 1 + w]
    return _blocks(block, x)


def defocus_blur(x: Tensor, severity: int, gen) -> Tensor:
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    s = _size_scale(x)
    # the radius scales with the image (at least 1 px, else the disk is a single pixel); the antialiasing blur
    # is about the pixel grid and does not
    return _filter(x, _disk(max(1.0, _scaled(c[0], s)), c[1], s, x.device, x.dtype))


def _glass_shuffle(n: int, h: int, w: int, delta: int, iterations: int, gen, device) -> Tensor:
    """Flat source index of every pixel after the reference's "shuffle", exactly in distribution.

    The reference loops over (h, w) in descending raster order and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
    with (h', w') = (h + dy, w + dx), dy, dx uniform in [-delta, delta). On numpy (and numba) arrays the right-hand
    side holds views, so this copies x[h', w'] into x[h, w] and leaves x[h', w'] as it was: a gather in which a
    source the loop has already visited (later in raster order) carries its new value. Here every pixel draws its
    offset at once and those chains are followed by pointer jumping (a few gathers), so it is batched."""
    top, bottom, left, right = delta + 1, h - delta + 1, delta + 1, w - delta + 1  # the loop's (delta, size - delta]
    # offsets and indices in int32 (half the memory traffic of int64 on the CPU); torch.take needs int64 at the end
    rows = torch.arange(top, bottom, device=device, dtype=torch.int32).view(1, -1, 1)
    cols = torch.arange(left, right, device=device, dtype=torch.int32).view(1, 1, -1)
    image_start = (torch.arange(n, device=device) * (h * w)).view(n, 1, 1)
    everything = torch.arange(n * h * w, device=device)
    source = everything.view(n, h, w) % (h * w)
    for _ in range(iterations):
        dy = _randint(-delta, delta, (n, bottom - top, right - left), gen, device, torch.int32)
        dx = _randint(-delta, delta, (n, bottom - top, right - left), gen, device, torch.int32)
        # new[p] = new[target] where the loop visited the target before p (later in raster order, inside the loop's
        # region), else old[target]
        ty, tx = rows + dy, cols + dx
        chained = ((dy > 0) | ((dy == 0) & (dx > 0))) & (ty < bottom) & (tx >= left) & (tx < right)
        target = everything.clone().view(n, h, w)
        target[:, top:bottom, left:right] = image_start + (ty * w + tx)
        link = torch.zeros((n, h, w), dtype=torch.bool, device=device)
        link[:, top:bottom, left:right] = chained
        target, link = target.flatten(), link.flatten()
        # follow the chains on the pixels still in one (fewer at every jump): pointer jumping
        active = link.nonzero().squeeze(1)
        while active.numel():
            hop = torch.take(target, active)
            target.index_copy_(0, active, torch.take(target, hop))
            still = torch.take(link, hop)
            link.index_copy_(0, active, still)
            active = active[still]
        source = torch.take(source, target).view(n, h, w)
    return source.view(n, h * w)


def glass_blur(x: Tensor, severity: int, gen) -> Tensor:
    # sigma, max_delta, iterations
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    s = _size_scale(x)
    sigma, delta = _scaled(c[0], s), _scaled(c[1], s, integer=True)
    n, ch, h, w = x.shape
    # skimage gaussian (truncate 4, mode 'nearest'), then np.uint8(x * 255), which truncates
    x = torch.floor(_gaussian(x, sigma, 4.0, 'replicate') * 255 + 1e-4) / 255
    source = _glass_shuffle(n, h, w, delta, c[2], gen, x.device)
    x = torch.gather(x.flatten(2), 2, source.view(n, 1, h * w).expand(n, ch, -1)).view(n, ch, h, w)
    return _gaussian(x, sigma, 4.0, 'replicate')


def motion_blur(x: Tensor, severity: int, gen) -> Tensor:
    c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    s = _size_scale(x)
    angle = _uniform(-45, 45, (x.shape[0],), gen, x.device, torch.float64)
    return _motion_blur(x, _scaled(c[0], s, integer=True), _scaled(c[1], s), angle)


_ZOOMS = [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)]


def zoom_blur(x: Tensor, severity: int, gen) -> Tensor:
    h, w = x.shape[-2:]
    zooms = _arange(*_ZOOMS[severity - 1])

    def block(b: Tensor) -> Tensor:
        b = b.contiguous(memory_format=torch.channels_last)  # torch's CPU bilinear is ~2x faster channels-last
        out = b.clone()
        for z in zooms:
            out += _clipped_zoom(b, z)[..., :h, :w]  # the reference keeps the top-left of the zoomed crop
        return (out / (len(zooms) + 1)).contiguous()
    return _blocks(block, x)


# ----------------------------------------------------------------------------------------------- weather

def snow(x: Tensor, severity: int, gen) -> Tensor:
    c = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8),
         (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    n, _, h, w = x.shape
    s = _size_scale(x)
    layer = _randn((n, 1, h, w), gen, x.device, x.dtype) * c[1] + c[0]
    layer = _clipped_zoom(layer, _scaled(c[2], s))
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    angle = _uniform(-135, -45, (n,), gen, x.device, torch.float64)
    layer = _motion_blur(layer, _scaled(c[4], s, integer=True), _scaled(c[5], s), angle)
    layer = (torch.round(layer * 255) / 255)[..., :h, :w]  # the reference stores the layer as uint8
    gray = kornia.color.rgb_to_grayscale(x)  # cv2.COLOR_RGB2GRAY weights
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


# Mean RGB and standard deviation of the grey level of the reference's six frost photos (frost2 and frost3 are the
# same photo, so it is drawn twice as often there and here): the procedural frost takes one look per image.
_FROST_LOOKS = [((0.305, 0.585, 0.650), 0.075), ((0.787, 0.805, 0.841), 0.087), ((0.787, 0.805, 0.841), 0.087),
                ((0.540, 0.599, 0.648), 0.113), ((0.441, 0.484, 0.528), 0.169), ((0.280, 0.374, 0.410), 0.164)]


def _find_frost_dir() -> str | None:
    # find_spec locates the package without importing it (its import pulls in cv2, numba and scikit-image)
    try:
        spec = importlib.util.find_spec('imagecorruptions')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), 'frost')
    return folder if os.path.isdir(folder) else None


#: Folder of the reference's frost photos (``imagecorruptions/frost``) when that package is installed; set it to
#: None to use the procedural frost (the same everywhere, whatever is installed).
FROST_DIR: str | None = _find_frost_dir()
_FROST_FILES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg')
_frost_photos_cache: dict[str, list[Tensor]] = {}
_frost_cache: dict[tuple, Tensor] = {}  # photos resized for an image size, device and dtype


def frost_source() -> str:
    """'imagecorruptions' when frost overlays the reference's photos, 'procedural' when it generates them."""
    return 'imagecorruptions' if FROST_DIR is not None else 'procedural'


def _frost_photos(folder: str) -> list[Tensor]:
    if folder not in _frost_photos_cache:
        from PIL import Image
        photos = []
        for name in _FROST_FILES:
            with Image.open(os.path.join(folder, name)) as im:
                data = torch.frombuffer(bytearray(im.convert('RGB').tobytes()), dtype=torch.uint8)
                photos.append(data.view(im.height, im.width, 3).permute(2, 0, 1).float().div(255))
        _frost_photos_cache[folder] = photos
    return _frost_photos_cache[folder]


def _frost_from_photos(x: Tensor, gen, folder: str) -> Tensor:
    n, _, h, w = x.shape
    s = _size_scale(x)
    which = _randint(0, len(_FROST_FILES), (n,), gen, 'cpu')
    starts = _rand((n, 2), gen, 'cpu', torch.float64)  # crop corners, scaled to each photo below
    layer = torch.empty_like(x)
    for k, photo in enumerate(_frost_photos(folder)):
        chosen = (which == k).nonzero().flatten()
        if not len(chosen):
            continue
        fh, fw = photo.shape[-2:]
        # the reference: scale 1.1 x (1, or what makes the photo cover the image), cv2.INTER_CUBIC
        factor = 1.1 * max(s, h / fh, w / fw)
        size = (math.ceil(fh * factor), math.ceil(fw * factor))
        key = (folder, k, size, str(x.device), x.dtype)
        if key not in _frost_cache:
            if len(_frost_cache) > 64:
                _frost_cache.clear()
            _frost_cache[key] = F.interpolate(photo[None].to(x.device, x.dtype), size=size, mode='bicubic',
                                              align_corners=False).clamp(0, 1)[0]
        photo = _frost_cache[key]
        # the reference: np.random.randint(0, rescaled - size), a random crop
        top = (starts[chosen, 0] * (size[0] - h)).long().to(x.device)
        left = (starts[chosen, 1] * (size[1] - w)).long().to(x.device)
        rows = top[:, None] + torch.arange(h, device=x.device)
        cols = left[:, None] + torch.arange(w, device=x.device)
        crops = photo[:, rows[:, :, None], cols[:, None, :]]  # (3, k, h, w)
        layer[chosen.to(x.device)] = crops.permute(1, 0, 2, 3)
    return layer


def _frost_procedural(x: Tensor, gen) -> Tensor:
    """Ice-crystal texture: seeds, denser in random patches, drawn out into short needles by line blurs in six
    random directions per image (kornia.filters.motion_blur), over a rough fractal frosting; tinted with the mean
    colour and contrast of one of the reference's photos. Made at half resolution and upsampled."""
    n, _, h, w = x.shape
    s = _size_scale(x)
    hh, ww = max(32, h // 2), max(32, w // 2)
    look = _randint(0, len(_FROST_LOOKS), (n,), gen, x.device)
    colour = torch.tensor([m for m, _ in _FROST_LOOKS], device=x.device, dtype=x.dtype)[look]
    contrast = torch.tensor([c for _, c in _FROST_LOOKS], device=x.device, dtype=x.dtype)[look]
    size = _next_power_of_2(max(hh, ww))
    patches = _plasma(n, size, 2.0, gen, x.device)[:, None, :hh, :ww].to(x.dtype)
    frosting = _plasma(n, size, 1.3, gen, x.device)[:, None, :hh, :ww].to(x.dtype)
    ksize = 2 * _scaled(5, s, integer=True) + 1
    needles = torch.zeros((n, 1, hh, ww), device=x.device, dtype=x.dtype)
    for _ in range(6):
        seeds = (_rand((n, 1, hh, ww), gen, x.device, x.dtype) < 0.05 * patches).to(x.dtype)
        angle = _uniform(0, 360, (n,), gen, x.device, x.dtype)
        taper = _uniform(-1, 1, (n,), gen, x.device, x.dtype)
        needles = torch.maximum(needles, kornia.filters.motion_blur(seeds, ksize, angle, taper, border_type='reflect'))
    needles = needles / needles.flatten(1).amax(1).clamp_min(1e-6).view(n, 1, 1, 1)
    texture = F.interpolate(needles + 0.6 * frosting, size=(h, w), mode='bilinear', align_corners=False)
    mean = texture.mean((2, 3), keepdim=True)
    std = texture.std((2, 3), keepdim=True).clamp_min(1e-6)
    texture = (texture - mean) / std * contrast.view(n, 1, 1, 1)
    return (colour.view(n, 3, 1, 1) + texture).clamp(0, 1)


def frost(x: Tensor, severity: int, gen) -> Tensor:
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    layer = _frost_from_photos(x, gen, FROST_DIR) if FROST_DIR is not None else _frost_procedural(x, gen)
    return c[0] * x + c[1] * layer


def _next_power_of_2(v: int) -> int:
    return 1 if v == 0 else 2 ** (v - 1).bit_length()


def _plasma(n: int, mapsize: int, decay: float, gen, device) -> Tensor:
    """The reference ``plasma_fractal`` (diamond-square) for ``n`` maps at once, in [0, 1]."""
    m = torch.zeros((n, mapsize, mapsize), device=device)
    step, wibble = mapsize, 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        return total / 4 + wibble * _uniform(-wibble, wibble, total.shape, gen, device)

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, 1)
        squares = squares + torch.roll(squares, -1, 2)
        m[:, half::step, half::step] = wibbled_mean(squares)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 2)
        m[:, 0::step, half::step] = wibbled_mean(left)
        top = centres + torch.roll(centres, 1, 2) + corners + torch.roll(corners, -1, 1)
        m[:, half::step, 0::step] = wibbled_mean(top)
        step //= 2
        wibble /= decay
    m = m - m.flatten(1).amin(1).view(n, 1, 1)
    return m / m.flatten(1).amax(1).view(n, 1, 1)


def fog(x: Tensor, severity: int, gen) -> Tensor:
    c = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)][severity - 1]
    n, _, h, w = x.shape
    max_val = x.flatten(1).amax(1).view(n, 1, 1, 1)
    haze = _plasma(n, _next_power_of_2(max(h, w, 3)), c[1], gen, x.device)[:, None, :h, :w].to(x.dtype)
    return (x + c[0] * haze) * max_val / (max_val + c[0])


# ----------------------------------------------------------------------------------------------- digital

def brightness(x: Tensor, severity: int, gen) -> Tensor:
    c = [.1, .2, .3, .4, .5][severity - 1]
    # The reference adds c to V of HSV (skimage) and converts back. With hue and saturation kept, RGB scales with V:
    # rgb * V' / V (grey V' for black pixels), the kornia rgb_to_hsv / hsv_to_rgb round trip without its 3x cost.
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(max=1)
    return torch.where(v > 0, x * (v_new / v.clamp_min(torch.finfo(x.dtype).tiny)), v_new)


def contrast(x: Tensor, severity: int, gen) -> Tensor:
    c = [0.4, .3, .2, .1, .05][severity - 1]
    means = x.mean((2, 3), keepdim=True)  # per image and channel, as the reference
    return (x - means).mul_(c).add_(means)


def elastic_transform(x: Tensor, severity: int, gen) -> Tensor:
    n, _, h, w = x.shape
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    max_d = h * 0.005  # the reference uses the height for both axes
    # Uniform displacements in pixels smoothed by a Gaussian of sigma = 1% of the size (scipy truncate 3, mode
    # 'reflect'), times alpha. kornia's elastic_transform2d smooths with zero padding (smaller displacements near
    # the border) and a depthwise convolution 4x slower on the CPU, so the smoothing is done here.
    noise = _uniform(-max_d, max_d, (n, 2, h, w), gen, x.device, x.dtype)
    disp = _gaussian(noise, (h * 0.01, w * 0.01), 3.0, 'symmetric') * alpha
    # scipy map_coordinates(order=1, mode='reflect') at (y + dy, x + dx) = bilinear grid_sample reflecting about
    # the pixel edges, with align_corners=False coordinates
    ys = torch.arange(h, device=x.device, dtype=x.dtype).view(1, h, 1)
    xs = torch.arange(w, device=x.device, dtype=x.dtype).view(1, 1, w)
    grid = torch.stack([(2 * (xs + disp[:, 0]) + 1) / w - 1, (2 * (ys + disp[:, 1]) + 1) / h - 1], -1)
    return F.grid_sample(x, grid, mode='bilinear', padding_mode='reflection', align_corners=False)


def _pil_box_matrix(size_in: int, size_out: int, device, dtype) -> Tensor:
    """PIL's ``Image.BOX`` resampling as a (size_out, size_in) matrix: the mean of the input pixels whose
    centres fall in each output pixel's footprint (Resample.c ``precompute_coeffs``)."""
    scale = size_in / size_out
    support = 0.5 * max(scale, 1.0)
    out = torch.arange(size_out, dtype=torch.float64)
    centre = (out + 0.5) * scale
    lo = (centre - support + 0.5).floor().clamp(0, size_in)
    hi = (centre + support + 0.5).floor().clamp(0, size_in)
    j = torch.arange(size_in, dtype=torch.float64)
    t = (j[None, :] - centre[:, None] + 0.5) / max(scale, 1.0)
    inside = (t > -0.5) & (t <= 0.5) & (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
    weights = inside.to(torch.float64)
    return (weights / weights.sum(1, keepdim=True)).to(device, dtype)


def pixelate(x: Tensor, severity: int, gen) -> Tensor:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    # PIL resize(BOX) to int(size * c), then resize(NEAREST) back (= torch 'nearest-exact')
    small = _pil_box_matrix(h, int(h * c), x.device, x.dtype) @ x @ _pil_box_matrix(w, int(w * c), x.device,
                                                                                      x.dtype).T
    return F.interpolate(small, size=(h, w), mode='nearest-exact')


def jpeg_compression(x: Tensor, severity: int, gen) -> Tensor:
    from torchvision.io import decode_jpeg, encode_jpeg
    c = [25, 18, 15, 10, 7][severity - 1]
    # libjpeg (4:2:0 chroma subsampling, the IJG quality tables), as PIL's save(quality=c) in the reference, on the
    # CPU whatever the images' device: torchvision's CUDA encoder (nvjpeg) gives other images, on an H200 a mean 6-7
    # levels away at quality 25 and 7 (up to 96), so one corruption on every device costs a copy to the host.
    # Channels-last views: libjpeg reads interleaved RGB, 3x faster to encode than planar images.
    pixels = torch.round(x.clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().contiguous()
    images = [i.permute(2, 0, 1) for i in pixels]

    def round_trip(chunk: list) -> list:  # one list per call: the only per-image step
        return decode_jpeg(encode_jpeg(chunk, quality=c))
    workers = min(torch.get_num_threads(), len(images))
    if workers <= 1:
        decoded = round_trip(images)
    else:  # torchvision releases the GIL: chunks of images in parallel threads, as torch's own ops would use them
        chunks = [images[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            done = list(pool.map(round_trip, chunks))
        decoded = [done[i % workers][i // workers] for i in range(len(images))]
    return torch.stack(decoded).to(x.device, x.dtype).div_(255)


# ----------------------------------------------------------------------------------------------- public API

def _size_scale(x: Tensor) -> float:
    return min(x.shape[-2:]) / REFERENCE_SIZE


_FUNCTIONS = {f.__name__: f for f in (
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur, snow, frost, fog,
    brightness, contrast, elastic_transform, pixelate, jpeg_compression)}
assert tuple(_FUNCTIONS) == CORRUPTIONS


def _check_name(name: str) -> str:
    if name not in _FUNCTIONS:
        close = difflib.get_close_matches(str(name), CORRUPTIONS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ''
        raise ValueError(f"Unknown corruption '{name}'.{hint} Valid: {', '.join(CORRUPTIONS)}.")
    return name


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f'Severity must be an integer in {", ".join(map(str, SEVERITIES))}; got {severity!r}.')
    return severity


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
    if work.device.type == 'cpu' and len(work) > _CPU_CHUNK:
        # a chunk's temporaries stay in the CPU's caches: 1.5-3x faster than whole batches of 64
        out = torch.cat([_corrupt(work[i:i + _CPU_CHUNK], name, severity, generator)
                         for i in range(0, len(work), _CPU_CHUNK)])
    else:
        out = _corrupt(work, name, severity, generator)
    return out.to(images.dtype)


# Images per call on the CPU (random numbers are then drawn chunk by chunk)
_CPU_CHUNK = 8


def _corrupt(x: Tensor, name: str, severity: int, generator) -> Tensor:
    out = _FUNCTIONS[name](x, severity, generator)  # a new tensor: changed in place below (saves passes)
    out.clamp_(0, 1)
    if name == 'pixelate':  # PIL rounds to 8 bits
        out.mul_(255).round_().div_(255)
    elif name != 'jpeg_compression':  # already 8-bit
        # the reference returns np.uint8(x * 255), which truncates (the epsilon keeps exact levels in float32)
        out.mul_(255).add_(1e-4).floor_().div_(255)
    return out


def parse_corruptions(text: str | None) -> list[str]:
    """'all' or None: the 15 corruptions; else a comma list of names (or of the groups noise, blur, weather,
    digital), in the order given, duplicates dropped. Unknown names raise ValueError listing the valid ones."""
    if text is None or str(text).strip().lower() in ('', 'all'):
        return list(CORRUPTIONS)
    names: list[str] = []
    for item in str(text).split(','):
        item = item.strip().lower()
        if not item:
            continue
        if item == 'all' or item in GROUPS:
            names += CORRUPTIONS if item == 'all' else GROUPS[item]
            continue
        if item not in _FUNCTIONS:
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
        values = list(range(lo, hi + 1)) if lo <= hi else [lo, hi]
        bad = [v for v in values if v not in SEVERITIES]
        if bad:
            raise ValueError(f'Severity {bad[0]} is out of range; valid severities: {valid}.')
        found.update(values)
    if not found:
        raise ValueError(f"No severity in {text!r}; valid severities: {valid}.")
    return sorted(found)
