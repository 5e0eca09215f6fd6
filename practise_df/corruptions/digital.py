"""Digital corruptions: contrast, elastic transform, pixelate and JPEG compression."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor

from ._filters import _gaussian
from ._random import _uniform


def contrast(x: Tensor, severity: int) -> Tensor:
    c = [0.4, .3, .2, .1, .05][severity - 1]
    means = x.mean((2, 3), keepdim=True)  # per image and channel, as the reference
    return (x - means).mul_(c).add_(means)


def sample_elastic_transform_params(x: Tensor, severity: int, generator) -> dict:
    n, _, h, w = x.shape
    max_d = h * 0.005  # the reference uses the height for both axes
    return {'noise': _uniform(-max_d, max_d, (n, 2, h, w), generator, x.device, x.dtype)}


def elastic_transform(x: Tensor, severity: int, noise: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    # Uniform displacements in pixels smoothed by a Gaussian of sigma = 1% of the size (scipy truncate 3, mode
    # 'reflect'), times alpha. kornia's elastic_transform2d smooths with zero padding (smaller displacements near
    # the border) and a depthwise convolution 4x slower on the CPU, so the smoothing is done here.
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


def pixelate(x: Tensor, severity: int) -> Tensor:
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[-2:]
    # PIL resize(BOX) to int(size * c), then resize(NEAREST) back (= torch 'nearest-exact')
    small = _pil_box_matrix(h, int(h * c), x.device, x.dtype) @ x @ _pil_box_matrix(w, int(w * c), x.device,
                                                                                      x.dtype).T
    return F.interpolate(small, size=(h, w), mode='nearest-exact')


def jpeg_compression(x: Tensor, severity: int) -> Tensor:
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
    # torchvision releases the GIL: chunks of images in parallel threads, as torch's own ops would use them
    workers = max(1, min(torch.get_num_threads(), len(images)))
    with ThreadPoolExecutor(workers) as pool:
        done = list(pool.map(round_trip, [images[i::workers] for i in range(workers)]))
    decoded = [done[i % workers][i // workers] for i in range(len(images))]
    return torch.stack(decoded).to(x.device, x.dtype).div_(255)
