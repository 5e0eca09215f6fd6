"""Out-of-domain and few-shot image sources, all as torch Datasets of ``(image tensor, label or -1)``.

``load_images(source, data_config, ...)`` understands:

* a local image folder, nested (one subfolder per class) or flat (unlabeled); a folder written by
  :func:`synth.synthesize` is read as it was optimised (:class:`synth.SynthesizedImages`, never resized);
* a folder written by ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``;
* ``hf:NAME[:SPLIT]``, or a bare ``NAME`` that is not a local path: a Hugging Face Hub dataset (online);
* ``crops:photo.jpg[,other.jpg]`` or ``crops:DIR``, or the path of one image file: random augmented crops of a few
  large photos (single-image distillation, Asano & Saeed, arXiv 2112.00725), for a model without
  BatchNorm and a user without data.

:func:`photo_crops` gives crops of natural photos as one tensor, by default of scikit-image's sample photos
(:data:`SAMPLE_PHOTOS`, offline): the images practise-df's guard compares students on and int8 export
calibrates with when the user has none.

Images are preprocessed with the teacher's eval transform (:func:`synth.data.eval_transform`).
Unreadable images are skipped and counted, never a crash.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset

from .data import (IMAGE_SUFFIXES, UNLABELED, ImageFolderDataset, decode_image, eval_transform, is_image_name,
                   subsample)
from .seeds import mix_seed
from .synthesized import SynthesizedImages, is_synthesized

__all__ = ['load_images', 'SingleImageCrops', 'HFImageDataset', 'HubUnreachableError', 'SAMPLE_PHOTOS', 'sample_photos',
           'photo_crops']

_logger = logging.getLogger(__name__)

DEFAULT_CROPS = 1024  # crops:... sources have no natural size
# scikit-image's natural photos with no copyright restriction: astronaut (NASA, public domain), chelsea
# (CC0, Stefan van der Walt), coffee (CC0, Rachel Michetti), rocket (SpaceX, public domain).
SAMPLE_PHOTOS = ('astronaut.png', 'chelsea.png', 'coffee.png', 'rocket.jpg')


class HubUnreachableError(ConnectionError, ValueError):
    """A Hugging Face dataset was asked for but the Hub cannot be reached (offline or no network).
    Also a ValueError, so command lines report it like any other bad argument."""


def load_images(
        source: str,
        data_config: dict,
        num_images: Optional[int] = None,
        seed: int = 0,
        *,
        split: Optional[str] = None,
        image_column: Optional[str] = None,
        label_column: Optional[str] = None,
        transform: Optional[Callable] = None,
        crops: bool = True,
) -> Dataset:
    """A Dataset of ``(image, label)`` (label -1 when unknown) from any supported source (module docstring).

    Args:
        source: folder, saved dataset, ``hf:NAME[:SPLIT]``, ``crops:P1,P2`` or an image file.
        data_config: the teacher's data config; gives the transform (and the crop size).
        num_images: keep this many, chosen by ``seed`` (crops: how many to generate, default 1024).
        seed: subsampling / crop seed.
        split: dataset split (default: ``train``, or the only split there is).
        image_column, label_column: Hugging Face columns (default: the Image feature and the ClassLabel
            feature or a column named ``label``).
        transform: replaces the eval transform of ``data_config`` (not used for crops).
        crops: accept crops of photos (``crops:...`` or an image file); False for evaluation, which needs
            a dataset.
    """
    if num_images is not None and num_images < 1:
        raise ValueError(f'num_images must be positive, got {num_images}.')
    if not crops and (source.startswith('crops:') or os.path.isfile(source)):
        raise ValueError(f"'{source}' is {'crops of photos' if source.startswith('crops:') else 'a file'}, not a "
                         'dataset: pass a folder of images (one subfolder per class gives labels), hf:NAME[:SPLIT] or '
                         'a save_to_disk folder.')
    if source.startswith('crops:'):
        paths = [p.strip() for p in source[len('crops:'):].split(',') if p.strip()]
        return SingleImageCrops(paths, num_images or DEFAULT_CROPS, data_config, seed)
    if os.path.isfile(source):
        if source.lower().endswith(IMAGE_SUFFIXES):
            return SingleImageCrops([source], num_images or DEFAULT_CROPS, data_config, seed)
        raise ValueError(f"'{source}' is a file but not an image ({', '.join(IMAGE_SUFFIXES)}). Pass an image "
                         "folder, a save_to_disk folder, hf:NAME or an image to crop.")
    if os.path.isdir(source) and transform is None and is_synthesized(source):  # used as optimised, never resized
        return SynthesizedImages(source, data_config['input_size'], data_config['mean'], data_config['std'],
                                 max_images=num_images, seed=seed)
    transform = transform or eval_transform(data_config)
    if os.path.isdir(source):
        if _is_saved_dataset(source):
            import datasets
            return HFImageDataset(_pick_split(datasets.load_from_disk(source), split, source), transform,
                                  num_images, seed, image_column, label_column, name=source)
        return ImageFolderDataset(source, transform, max_images=num_images, seed=seed)
    if not source.startswith('hf:') and _looks_like_path(source):
        raise FileNotFoundError(f"'{source}' does not exist. Pass an existing image folder or file, "
                                "hf:NAME[:SPLIT] or crops:PHOTO.jpg.")
    name = source[len('hf:'):] if source.startswith('hf:') else source
    if ':' in name:
        name, split = name.split(':', 1)
    return HFImageDataset(_load_hub_dataset(name, split), transform, num_images, seed, image_column,
                          label_column, name=name)


# --- Hugging Face datasets ---------------------------------------------------------------------------

def _looks_like_path(source: str) -> bool:
    """Hub names are NAME or ORG/NAME; anything else that does not exist locally is a mistyped path."""
    return (source.startswith(('/', '.', '~')) or source.count('/') > 1 or (os.sep != '/' and os.sep in source)
            or source.lower().endswith(IMAGE_SUFFIXES))

def _is_saved_dataset(path: str) -> bool:
    """save_to_disk writes dataset_info.json + state.json (Dataset) or dataset_dict.json (DatasetDict)."""
    files = set(os.listdir(path))
    return 'dataset_dict.json' in files or {'dataset_info.json', 'state.json'} <= files


def _pick_split(ds, split: Optional[str], name: str):
    import datasets
    if not isinstance(ds, datasets.DatasetDict):
        if split is not None and split != 'train':
            _logger.warning("'%s' is a single split; ignoring split='%s'.", name, split)
        return ds
    if split is None:
        split = 'train' if 'train' in ds else (next(iter(ds)) if len(ds) == 1 else None)
        if split is None:
            raise ValueError(f"'{name}' has splits {list(ds)} and none is 'train'; choose one with split=.")
    if split not in ds:
        raise ValueError(f"'{name}' has no split '{split}'; it has {list(ds)}.")
    return ds[split]


def _hub_offline() -> bool:
    import datasets
    env = os.environ.get('HF_HUB_OFFLINE', os.environ.get('HF_DATASETS_OFFLINE', ''))
    return bool(datasets.config.HF_HUB_OFFLINE) or env.upper() in ('1', 'ON', 'YES', 'TRUE')


def _load_hub_dataset(name: str, split: Optional[str]):
    import datasets  # heavy, and only needed for Hugging Face datasets
    offline = _hub_offline()
    hint = (f"Use a local image folder, or on a machine with internet run "
            f"`datasets.load_dataset('{name}', split='{split or 'train'}').save_to_disk(DIR)` and pass DIR.")
    try:
        ds = datasets.load_dataset(name, split=split)
    except ConnectionError as e:  # datasets reports offline mode and network failures as ConnectionError
        why = 'offline mode is on (HF_HUB_OFFLINE=1)' if offline else 'the network request failed'
        raise HubUnreachableError(f"Cannot load the Hugging Face dataset '{name}': the Hub is unreachable "
                                  f"({why}) and no cached copy was found. {hint}") from e
    except FileNotFoundError as e:
        raise FileNotFoundError(f"'{name}' is neither a local path nor a Hugging Face dataset: {e}. {hint}") from e
    return _pick_split(ds, split, name)


class HFImageDataset(Dataset):
    """``(image, label)`` items of a Hugging Face dataset with an image column.

    Images are decoded lazily; the chosen subset is checked once up front so corrupt entries are
    skipped and counted (``skipped``) instead of failing in the middle of a run.
    """

    def __init__(self, ds, transform: Callable, num_images: Optional[int] = None, seed: int = 0,
                 image_column: Optional[str] = None, label_column: Optional[str] = None, name: str = 'dataset'):
        import datasets
        features = ds.features
        self.image_column = image_column or next(
            (k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        if self.image_column not in features:
            raise ValueError(f"'{name}' has no image column (columns: {list(features)}); pass image_column=.")
        if label_column is None:
            label_column = next((k for k, f in features.items() if isinstance(f, datasets.ClassLabel)),
                                'label' if 'label' in features else None)
        elif label_column not in features:
            raise ValueError(f"'{name}' has no column '{label_column}' (columns: {list(features)}).")
        self.label_column = label_column
        self.labelled = label_column is not None
        indices = list(range(len(ds)))
        if num_images is not None and num_images < len(indices):
            indices = subsample(indices, num_images, seed)
        # Raw bytes: decoding happens in __getitem__, and a broken file only costs its own item.
        self.ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        self.indices = [i for i in indices if _decode(self.ds[i][self.image_column]) is not None]
        self.skipped = len(indices) - len(self.indices)
        if self.skipped:
            _logger.warning("Skipped %d unreadable image(s) in '%s'.", self.skipped, name)
        if not self.indices:
            raise ValueError(f"No readable image in '{name}'"
                             f"{f' ({self.skipped} could not be decoded)' if self.skipped else ''}.")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        item = self.ds[self.indices[index]]
        image = _decode(item[self.image_column])
        if image is None:  # it decoded when the dataset was opened
            raise OSError(f'Image {self.indices[index]} of the dataset no longer decodes.')
        label = item[self.label_column] if self.label_column else UNLABELED
        return self.transform(image), int(label) if label is not None else UNLABELED


def _decode(value) -> Optional[Image.Image]:
    if value is None:
        return None
    return decode_image(value['bytes'] if value.get('bytes') is not None else value['path'])


# --- single-image crops ------------------------------------------------------------------------------

class SingleImageCrops(Dataset):
    """``num_images`` strongly augmented random crops of one or a few large photos (label -1).

    Item ``i`` is a pure function of ``(seed, i)``: the same crop whatever the order, worker or epoch,
    as Asano & Saeed's single-image distillation data but without materialising the patches. Crops cover
    ``scale`` of the photo's area, with flips, colour jitter and grayscale, then the teacher's
    normalisation. With probability ``cutmix`` a box of a second crop (from the next photo) is pasted in
    (CutMix, area drawn uniformly): new image statistics the teacher still labels, at no extra cost.
    """

    labelled = False

    def __init__(self, paths: Sequence[str], num_images: int, data_config: dict, seed: int = 0,
                 scale: Tuple[float, float] = (0.02, 1.0), color_jitter: float = 0.4, cutmix: float = 0.0):
        if not paths:
            raise ValueError('SingleImageCrops needs at least one image path (crops:photo.jpg).')
        if num_images < 1:
            raise ValueError(f'num_images must be positive, got {num_images}.')
        if not 0.0 <= cutmix <= 1.0:
            raise ValueError(f'cutmix is a probability in [0, 1], got {cutmix}.')
        paths = photo_paths(paths)
        self.images: List[Image.Image] = []
        for p in paths:
            image = decode_image(p)
            if image is None:
                _logger.warning("Skipped image '%s': it does not decode.", p)
            else:
                self.images.append(image)
        self.skipped = len(paths) - len(self.images)
        if not self.images:
            raise ValueError(f'None of the images {list(paths)} could be decoded; pass a readable photo.')
        self.num_images, self.seed, self.cutmix = num_images, seed, cutmix
        size = data_config['input_size'][-2:]
        c = color_jitter
        self.transform = T.Compose([
            T.RandomResizedCrop(size, scale=scale, interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(c, c, c, 0.1)], p=0.8),
            T.RandomGrayscale(p=0.2),
            T.ToTensor(),
            T.Normalize(data_config['mean'], data_config['std']),
        ])

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        item_seed = mix_seed(self.seed, index)
        # torchvision transforms draw from the global generator: seed a private copy of it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            x = self.transform(self.images[index % len(self.images)])
            if self.cutmix and torch.rand(()) < self.cutmix:
                other = self.transform(self.images[(index + 1) % len(self.images)])
                x = _paste_box(x, other, area=float(torch.rand(())))
            return x, UNLABELED


def _paste_box(x: torch.Tensor, other: torch.Tensor, area: float) -> torch.Tensor:
    """``x`` with a box covering about ``area`` of it (aspect as the image's, position from torch's
    generator) replaced by the same box of ``other``."""
    h, w = x.shape[-2:]
    bh, bw = int(round(h * area ** 0.5)), int(round(w * area ** 0.5))
    top = int(torch.randint(0, h - bh + 1, ()))
    left = int(torch.randint(0, w - bw + 1, ()))
    x = x.clone()
    x[:, top:top + bh, left:left + bw] = other[:, top:top + bh, left:left + bw]
    return x


def photo_paths(sources: Sequence[str]) -> List[str]:
    """Image files named in ``sources``: files as given, folders expanded to the images in them (sorted)."""
    paths: List[str] = []
    for source in sources:
        if os.path.isdir(source):
            found = sorted(os.path.join(source, f) for f in os.listdir(source) if is_image_name(f))
            if not found:
                raise ValueError(f"Folder '{source}' holds no image ({', '.join(IMAGE_SUFFIXES)}) to crop.")
            paths += found
        elif os.path.isfile(source):
            paths.append(source)
        else:
            raise FileNotFoundError(f"Image '{source}' for crops does not exist.")
    return paths


def sample_photos() -> Tuple[str, ...]:
    """Paths of the sample photos (needs scikit-image, a dependency of practise-df)."""
    import skimage.data  # only to find its folder
    folder = os.path.dirname(skimage.data.__file__)
    return tuple(os.path.join(folder, name) for name in SAMPLE_PHOTOS)


def photo_crops(data_config: dict, source: Optional[Sequence[str]] = None, num_images: int = 256,
                seed: int = 0) -> torch.Tensor:
    """``num_images`` crops (8-100% of the area, no colour change) of the photos in ``source`` (files or
    folders; default: :func:`sample_photos`), preprocessed for the model, as one tensor."""
    paths = photo_paths(source) if source else sample_photos()
    crops = SingleImageCrops(paths, num_images, data_config, seed=seed, scale=(0.08, 1.0), color_jitter=0.0)
    return torch.stack([crops[i][0] for i in range(num_images)])
