"""Image folders, nested (one subfolder per class, ImageFolder layout) or flat (no labels), their
transforms, and the one place images are decoded (:func:`decode_image`).

A file that does not decode is skipped and counted instead of crashing a long job; a folder with no
readable image is an error that says so.
"""
from __future__ import annotations

import io
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm.data
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import transforms
from torch.utils.data import DataLoader, Dataset

_logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.webp', '.tif', '.tiff', '.ppm', '.pgm', '.jfif')
UNLABELED = -1


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith('.')


def decode_image(source) -> Optional[Image.Image]:
    """The 8-bit RGB image of ``source`` (a path, bytes or a file object), or None when it does not decode.

    The pixels are loaded, not only the header: ``Image.verify()`` passes a truncated JPEG. 16-bit and
    32-bit integer images (16-bit PNG, TIFF) are scaled to 8 bits; PIL's own conversion would clip them
    (a 16-bit PNG would come out almost all white).
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()
            if im.mode in ('I', 'I;16', 'I;16B', 'I;16L', 'I;16N', 'F'):
                return _to_8bit(im).convert('RGB')
            return im.convert('RGB')
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def _to_8bit(im: Image.Image) -> Image.Image:
    """Grayscale of 16 or 32 bits per pixel (or float) scaled to 0-255."""
    values = np.asarray(im, dtype=np.float64)
    # float images: [0, 1] when they fit, else their own range; 16-bit data (PNG and TIFF store it as I;16 or I)
    # likewise up to 65535, wider integers their own range
    top = max(values.max(initial=0), 1.0 if im.mode == 'F' else 65535.0)
    return Image.fromarray(np.clip(np.rint(values / top * 255.0), 0, 255).astype(np.uint8), mode='L')


def scan_image_folder(root: str, class_to_idx: Optional[Dict[str, int]] = None
                      ) -> Tuple[List[Tuple[str, int]], List[str]]:
    """List ``(path, label)`` pairs under ``root``.

    Subfolders are classes (sorted names, as torchvision's ImageFolder; images nested deeper count
    for their top-level subfolder). When every subfolder name is a number (``0042``, as synthesised
    folders are written) the number is the label, so a folder holding only some classes keeps the
    model's class indices. Images directly in ``root`` are unlabeled (label -1).
    Returns (samples, class names); :func:`pick_readable` keeps those that decode.
    """
    if os.path.isfile(root):
        raise NotADirectoryError(f"'{root}' is a file, not an image folder: pass the folder that holds the images.")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder '{root}' does not exist.")
    entries = sorted(os.listdir(root))
    classes = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith('.')]
    if class_to_idx is None:
        numeric = bool(classes) and all(c.isdigit() for c in classes)
        class_to_idx = {c: int(c) if numeric else i for i, c in enumerate(classes)}
    candidates: List[Tuple[str, int]] = [(os.path.join(root, e), UNLABELED) for e in entries
                                         if is_image_name(e) and os.path.isfile(os.path.join(root, e))]
    for c in classes:
        label = class_to_idx.get(c, UNLABELED)
        for dirpath, dirnames, filenames in sorted(os.walk(os.path.join(root, c), followlinks=True)):
            dirnames.sort()
            candidates += [(os.path.join(dirpath, f), label) for f in sorted(filenames) if is_image_name(f)]
    if not candidates:
        raise ValueError(f"No readable image under '{root}' (no {', '.join(IMAGE_SUFFIXES)} file). "
                         "Point to a folder of images, flat or with one subfolder per class.")
    return candidates, classes


def pick_readable(samples: Sequence[Tuple[str, int]], root: str, max_images: Optional[int] = None,
                  seed: int = 0) -> Tuple[List[Tuple[str, int]], int]:
    """Up to ``max_images`` samples whose file decodes (:func:`decode_image`), chosen by ``seed`` (all when
    None; original order kept), and how many files met on the way did not decode (logged)."""
    order = range(len(samples))
    if max_images is not None and max_images < len(samples):
        order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed)).tolist()
    kept, skipped = [], 0
    for i in order:
        if max_images is not None and len(kept) == max_images:
            break
        if decode_image(samples[i][0]) is None:
            skipped += 1
        else:
            kept.append(i)
    if skipped:
        _logger.warning("Skipped %d unreadable image file(s) under '%s' (they do not decode).", skipped, root)
    if not kept:
        raise ValueError(f"No readable image under '{root}': {skipped} file(s) could not be decoded.")
    return [samples[i] for i in sorted(kept)], skipped


class ImageFolderDataset(Dataset):
    """Images of a folder with labels from subfolder names (-1 when flat)."""

    def __init__(self, root: str, transform: Optional[Callable] = None,
                 class_to_idx: Optional[Dict[str, int]] = None, max_images: Optional[int] = None, seed: int = 0):
        self.root = root
        samples, self.classes = scan_image_folder(root, class_to_idx)
        # Decoded once up front, so a broken file is skipped and counted here, not hours into a run.
        self.samples, self.skipped = pick_readable(samples, root, max_images, seed)
        self.labelled = any(label != UNLABELED for _, label in self.samples)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = decode_image(path)
        if image is None:  # it decoded when the folder was scanned
            raise OSError(f"Image '{path}' changed and no longer decodes since the folder was scanned; "
                          "restore it, or remove it and run again.")
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def subsample(items: Sequence, n: int, seed: int = 0) -> list:
    """``n`` items chosen without replacement, the same for the same seed; original order kept."""
    gen = torch.Generator().manual_seed(seed)
    keep = sorted(torch.randperm(len(items), generator=gen)[:n].tolist())
    return [items[i] for i in keep]


def eval_transform(data_config: dict, normalize: bool = True) -> Callable:
    """timm's eval transform for a data config (resize, center crop, normalise). With
    ``normalize=False`` images stay in [0, 1] (e.g. to corrupt them before normalising)."""
    cfg = {k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std', 'crop_pct', 'crop_mode')
           if k in data_config}
    transform = timm.data.create_transform(**cfg, is_training=False)
    if not normalize:
        transform.transforms = [t for t in transform.transforms if not isinstance(t, transforms.Normalize)]
    return transform


def train_transform(data_config: dict, scale=(0.25, 1.0)) -> Callable:
    """Light training augmentation for distillation (random resized crop + flip, no colour change):
    teacher and student see the same augmented image, so more views cost nothing in correctness."""
    cfg = {k: data_config[k] for k in ('input_size', 'interpolation', 'mean', 'std') if k in data_config}
    return timm.data.create_transform(**cfg, is_training=True, scale=scale, hflip=0.5, color_jitter=None,
                                      auto_augment=None, re_prob=0.0)


def image_loader(root: str, data_config: dict, batch_size: int = 32, max_images: Optional[int] = None,
                 seed: int = 0, num_workers: int = 0, shuffle: bool = False) -> DataLoader:
    dataset = ImageFolderDataset(root, eval_transform(data_config), max_images=max_images, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed) if shuffle else None)


def load_image_tensor(root: str, data_config: dict, max_images: Optional[int] = None,
                      seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """All (or ``max_images``) images of a folder as one preprocessed tensor, with labels."""
    batches = list(image_loader(root, data_config, batch_size=64, max_images=max_images, seed=seed))
    return torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])


def split_tensor(images: torch.Tensor, n_first: int, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    """Random split of an image tensor into ``n_first`` and the rest (the tiny set and held-out images)."""
    if not 0 < n_first < len(images):
        raise ValueError(f'Cannot split {len(images)} images into {n_first} and the rest; '
                         'need at least one image on each side.')
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images[perm[:n_first]], images[perm[n_first:]]
