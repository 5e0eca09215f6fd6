"""Blur corruptions: defocus, glass, motion and zoom."""
from __future__ import annotations

import torch
from torch import Tensor

from ._filters import _arange, _blocks, _clipped_zoom, _disk, _filter, _gaussian, _motion_blur, _scaled, _size_scale
from ._random import _randint, _uniform


def defocus_blur(x: Tensor, severity: int) -> Tensor:
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    s = _size_scale(x)
    # the radius scales with the image (at least 1 px, else the disk is a single pixel); the antialiasing blur
    # is about the pixel grid and does not
    return _filter(x, _disk(max(1.0, _scaled(c[0], s)), c[1], s, x.device, x.dtype))


def _glass_setting(x: Tensor, severity: int) -> tuple[float, int, int]:
    """Gaussian sigma and largest shuffle offset at this image size, and the number of shuffle passes."""
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    s = _size_scale(x)
    return _scaled(c[0], s), _scaled(c[1], s, integer=True), c[2]


def _glass_offsets(n: int, h: int, w: int, delta: int, iterations: int, gen, device) -> list[tuple[Tensor, Tensor]]:
    """Per shuffle pass, the offsets (dy, dx), uniform in [-delta, delta), of the pixels the reference's loop visits,
    (delta, size - delta] on each axis; int32, half the memory traffic of int64 on the CPU."""
    shape = (n, h - 2 * delta, w - 2 * delta)
    return [(_randint(-delta, delta, shape, gen, device, torch.int32),
             _randint(-delta, delta, shape, gen, device, torch.int32)) for _ in range(iterations)]


def _glass_shuffle(n: int, h: int, w: int, delta: int, offsets: list[tuple[Tensor, Tensor]], device) -> Tensor:
    """Flat source index of every pixel after the reference's "shuffle" with these offsets.

    The reference loops over (h, w) in descending raster order and runs ``x[h, w], x[h', w'] = x[h', w'], x[h, w]``
    with (h', w') = (h + dy, w + dx), dy, dx uniform in [-delta, delta). On numpy (and numba) arrays the right-hand
    side holds views, so this copies x[h', w'] into x[h, w] and leaves x[h', w'] as it was: a gather in which a
    source the loop has already visited (later in raster order) carries its new value. Here every pixel has its
    offset at once and those chains are followed by pointer jumping (a few gathers), so it is batched."""
    top, bottom, left, right = delta + 1, h - delta + 1, delta + 1, w - delta + 1  # the loop's (delta, size - delta]
    # indices in int32 like the offsets; torch.take needs int64 at the end
    rows = torch.arange(top, bottom, device=device, dtype=torch.int32).view(1, -1, 1)
    cols = torch.arange(left, right, device=device, dtype=torch.int32).view(1, 1, -1)
    image_start = (torch.arange(n, device=device) * (h * w)).view(n, 1, 1)
    everything = torch.arange(n * h * w, device=device)
    source = everything.view(n, h, w) % (h * w)
    for dy, dx in offsets:
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


def sample_glass_blur_params(x: Tensor, severity: int, generator) -> dict:
    n, _, h, w = x.shape
    _, delta, iterations = _glass_setting(x, severity)
    return {'offsets': _glass_offsets(n, h, w, delta, iterations, generator, x.device)}


def glass_blur(x: Tensor, severity: int, offsets: list[tuple[Tensor, Tensor]]) -> Tensor:
    sigma, delta, _ = _glass_setting(x, severity)
    n, ch, h, w = x.shape
    # skimage gaussian (truncate 4, mode 'nearest'), then np.uint8(x * 255), which truncates
    x = torch.floor(_gaussian(x, sigma, 4.0, 'replicate') * 255 + 1e-4) / 255
    source = _glass_shuffle(n, h, w, delta, offsets, x.device)
    x = torch.gather(x.flatten(2), 2, source.view(n, 1, h * w).expand(n, ch, -1)).view(n, ch, h, w)
    return _gaussian(x, sigma, 4.0, 'replicate')


def sample_motion_blur_params(x: Tensor, severity: int, generator) -> dict:
    return {'angle': _uniform(-45, 45, (x.shape[0],), generator, x.device, torch.float64)}


def motion_blur(x: Tensor, severity: int, angle: Tensor) -> Tensor:
    c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    s = _size_scale(x)
    return _motion_blur(x, _scaled(c[0], s, integer=True), _scaled(c[1], s), angle)


_ZOOMS = [(1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)]


def zoom_blur(x: Tensor, severity: int) -> Tensor:
    h, w = x.shape[-2:]
    zooms = _arange(*_ZOOMS[severity - 1])

    def block(b: Tensor) -> Tensor:
        b = b.contiguous(memory_format=torch.channels_last)  # torch's CPU bilinear is ~2x faster channels-last
        out = b.clone()
        for z in zooms:
            out += _clipped_zoom(b, z)[..., :h, :w]  # the reference keeps the top-left of the zoomed crop
        return (out / (len(zooms) + 1)).contiguous()
    return _blocks(block, x)
