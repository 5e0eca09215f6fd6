"""Weather corruptions: snow, frost (the reference's photos or a procedural texture), fog and brightness."""
from __future__ import annotations

import importlib.util
import math
import os

import kornia
import torch
import torch.nn.functional as F
from torch import Tensor

from ._filters import _clipped_zoom, _motion_blur, _scaled, _size_scale
from ._random import _rand, _randint, _randn, _uniform


def sample_snow_params(x: Tensor, severity: int, generator) -> dict:
    n, _, h, w = x.shape
    return {'flakes': _randn((n, 1, h, w), generator, x.device, x.dtype),
            'angle': _uniform(-135, -45, (n,), generator, x.device, torch.float64)}


def snow(x: Tensor, severity: int, flakes: Tensor, angle: Tensor) -> Tensor:
    c = [(0.1, 0.3, 3, 0.5, 10, 4, 0.8),
         (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
         (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
         (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
         (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    h, w = x.shape[-2:]
    s = _size_scale(x)
    layer = _clipped_zoom(flakes * c[1] + c[0], _scaled(c[2], s))
    layer = torch.where(layer < c[3], torch.zeros_like(layer), layer).clamp(0, 1)
    layer = _motion_blur(layer, _scaled(c[4], s, integer=True), _scaled(c[5], s), angle)
    layer = (torch.round(layer * 255) / 255)[..., :h, :w]  # the reference stores the layer as uint8
    gray = kornia.color.rgb_to_grayscale(x)  # cv2.COLOR_RGB2GRAY weights
    x = c[6] * x + (1 - c[6]) * torch.maximum(x, gray * 1.5 + 0.5)
    return x + layer + layer.flip(-2, -1)


# Frost overlays photos of frost in the reference. They are not shipped here: they are read from an installed
# imagecorruptions package (the package's FROST_DIR), else a procedural ice texture is generated.
# Mean RGB and standard deviation of the grey level of the reference's six frost photos (frost2 and frost3 are the
# same photo, so it is drawn twice as often there and here): the procedural frost takes one look per image.
_FROST_LOOKS = [((0.305, 0.585, 0.650), 0.075), ((0.787, 0.805, 0.841), 0.087), ((0.787, 0.805, 0.841), 0.087),
                ((0.540, 0.599, 0.648), 0.113), ((0.441, 0.484, 0.528), 0.169), ((0.280, 0.374, 0.410), 0.164)]
_FROST_FILES = ('frost1.png', 'frost2.png', 'frost3.png', 'frost4.jpg', 'frost5.jpg', 'frost6.jpg')
_frost_photos_cache: dict[str, list[Tensor]] = {}
_frost_cache: dict[tuple, Tensor] = {}  # photos resized for an image size, device and dtype


def _find_frost_dir() -> str | None:
    """The folder of the reference's frost photos (``imagecorruptions/frost``) when that package is installed."""
    # find_spec locates the package without importing it (its import pulls in cv2, numba and scikit-image)
    try:
        spec = importlib.util.find_spec('imagecorruptions')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = os.path.join(next(iter(spec.submodule_search_locations)), 'frost')
    return folder if os.path.isdir(folder) else None


def _frost_photos(folder: str) -> list[Tensor]:
    if folder not in _frost_photos_cache:
        from PIL import Image
        from torchvision.transforms.functional import pil_to_tensor
        photos = []
        for name in _FROST_FILES:
            with Image.open(os.path.join(folder, name)) as im:
                photos.append(pil_to_tensor(im.convert('RGB')).float().div(255))
        _frost_photos_cache[folder] = photos
    return _frost_photos_cache[folder]


def _frost_from_photos(x: Tensor, folder: str, which: Tensor, starts: Tensor) -> Tensor:
    """A crop of photo ``which[i]`` per image, its corner at ``starts[i]`` (fractions of the free range)."""
    n, _, h, w = x.shape
    s = _size_scale(x)
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


def _sample_frost_texture(x: Tensor, gen) -> dict:
    """The draws of :func:`_frost_procedural`: a look per image, two fractals, and six needle passes (seeds,
    direction, taper), at half resolution."""
    n, _, h, w = x.shape
    hh, ww = max(32, h // 2), max(32, w // 2)
    size = _next_power_of_2(max(hh, ww))
    params = {'look': _randint(0, len(_FROST_LOOKS), (n,), gen, x.device),
              'patches': _plasma_wibbles(n, size, 2.0, gen, x.device),
              'frosting': _plasma_wibbles(n, size, 1.3, gen, x.device), 'seeds': [], 'angles': [], 'tapers': []}
    for _ in range(6):
        params['seeds'].append(_rand((n, 1, hh, ww), gen, x.device, x.dtype))
        params['angles'].append(_uniform(0, 360, (n,), gen, x.device, x.dtype))
        params['tapers'].append(_uniform(-1, 1, (n,), gen, x.device, x.dtype))
    return params


def _frost_procedural(x: Tensor, look: Tensor, patches: list[Tensor], frosting: list[Tensor], seeds: list[Tensor],
                      angles: list[Tensor], tapers: list[Tensor]) -> Tensor:
    """Ice-crystal texture: seeds, denser in random patches, drawn out into short needles by line blurs in six
    random directions per image (kornia.filters.motion_blur), over a rough fractal frosting; tinted with the mean
    colour and contrast of one of the reference's photos. Made at half resolution and upsampled."""
    n, _, h, w = x.shape
    hh, ww = seeds[0].shape[-2:]
    colour = torch.tensor([m for m, _ in _FROST_LOOKS], device=x.device, dtype=x.dtype)[look]
    contrast = torch.tensor([c for _, c in _FROST_LOOKS], device=x.device, dtype=x.dtype)[look]
    patches = _plasma(patches)[:, None, :hh, :ww].to(x.dtype)
    frosting = _plasma(frosting)[:, None, :hh, :ww].to(x.dtype)
    ksize = 2 * _scaled(5, _size_scale(x), integer=True) + 1
    needles = torch.zeros((n, 1, hh, ww), device=x.device, dtype=x.dtype)
    for uniform, angle, taper in zip(seeds, angles, tapers):
        seeded = (uniform < 0.05 * patches).to(x.dtype)
        needles = torch.maximum(needles, kornia.filters.motion_blur(seeded, ksize, angle, taper, border_type='reflect'))
    needles = needles / needles.flatten(1).amax(1).clamp_min(1e-6).view(n, 1, 1, 1)
    texture = F.interpolate(needles + 0.6 * frosting, size=(h, w), mode='bilinear', align_corners=False)
    mean = texture.mean((2, 3), keepdim=True)
    std = texture.std((2, 3), keepdim=True).clamp_min(1e-6)
    texture = (texture - mean) / std * contrast.view(n, 1, 1, 1)
    return (colour.view(n, 3, 1, 1) + texture).clamp(0, 1)


def sample_frost_params(x: Tensor, severity: int, generator, folder: str | None) -> dict:
    """Which photo of ``folder`` and where each image's crop starts, or with ``folder`` None the procedural
    texture's draws."""
    if folder is None:
        return {'texture': _sample_frost_texture(x, generator)}
    n = x.shape[0]
    return {'photos': {'folder': folder, 'which': _randint(0, len(_FROST_FILES), (n,), generator, 'cpu'),
                       'starts': _rand((n, 2), generator, 'cpu', torch.float64)}}


def frost(x: Tensor, severity: int, photos: dict | None = None, texture: dict | None = None) -> Tensor:
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    layer = _frost_from_photos(x, **photos) if photos is not None else _frost_procedural(x, **texture)
    return c[0] * x + c[1] * layer


def _next_power_of_2(v: int) -> int:
    return 1 if v == 0 else 2 ** (v - 1).bit_length()


def _plasma_wibbles(n: int, mapsize: int, decay: float, gen, device) -> list[Tensor]:
    """The random displacements of :func:`_plasma` for ``n`` maps, coarse to fine: three per level (the squares'
    centres, then the left and the top edges), within +-wibble^2, wibble 100 divided by ``decay`` at each level."""
    wibbles, wibble = [], 100.0
    for level in range(mapsize.bit_length() - 1):  # steps mapsize, mapsize / 2, ..., 2
        wibbles += [wibble * _uniform(-wibble, wibble, (n, 2 ** level, 2 ** level), gen, device) for _ in range(3)]
        wibble /= decay
    return wibbles


def _plasma(wibbles: list[Tensor]) -> Tensor:
    """The reference ``plasma_fractal`` (diamond-square) for a batch of maps, in [0, 1], from
    :func:`_plasma_wibbles`."""
    n, mapsize = wibbles[0].shape[0], 2 * wibbles[-1].shape[-1]
    m = torch.zeros((n, mapsize, mapsize), device=wibbles[0].device)
    step = mapsize
    for level in range(len(wibbles) // 3):
        half = step // 2
        corners = m[:, 0::step, 0::step]
        squares = corners + torch.roll(corners, -1, 1)
        squares = squares + torch.roll(squares, -1, 2)
        m[:, half::step, half::step] = squares / 4 + wibbles[3 * level]
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        left = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 2)
        m[:, 0::step, half::step] = left / 4 + wibbles[3 * level + 1]
        top = centres + torch.roll(centres, 1, 2) + corners + torch.roll(corners, -1, 1)
        m[:, half::step, 0::step] = top / 4 + wibbles[3 * level + 2]
        step //= 2
    m = m - m.flatten(1).amin(1).view(n, 1, 1)
    return m / m.flatten(1).amax(1).view(n, 1, 1)


_FOG = [(1.5, 2), (2., 2), (2.5, 1.7), (2.5, 1.5), (3., 1.4)]  # haze strength, fractal decay


def sample_fog_params(x: Tensor, severity: int, generator) -> dict:
    n, _, h, w = x.shape
    return {'wibbles': _plasma_wibbles(n, _next_power_of_2(max(h, w, 3)), _FOG[severity - 1][1], generator, x.device)}


def fog(x: Tensor, severity: int, wibbles: list[Tensor]) -> Tensor:
    c = _FOG[severity - 1]
    n, _, h, w = x.shape
    max_val = x.flatten(1).amax(1).view(n, 1, 1, 1)
    haze = _plasma(wibbles)[:, None, :h, :w].to(x.dtype)
    return (x + c[0] * haze) * max_val / (max_val + c[0])


def brightness(x: Tensor, severity: int) -> Tensor:
    c = [.1, .2, .3, .4, .5][severity - 1]
    # The reference adds c to V of HSV (skimage) and converts back. With hue and saturation kept, RGB scales with V:
    # rgb * V' / V (grey V' for black pixels), the kornia rgb_to_hsv / hsv_to_rgb round trip without its 3x cost.
    v = x.amax(1, keepdim=True)
    v_new = (v + c).clamp(max=1)
    return torch.where(v > 0, x * (v_new / v.clamp_min(torch.finfo(x.dtype).tiny)), v_new)
