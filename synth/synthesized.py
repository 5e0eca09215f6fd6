"""A synthesized set read back as it was optimised: at its own resolution and normalisation, never
resized or cropped.

The images of :func:`synth.synthesize` are optimised so the teacher recognises them at exactly that
size; a real-image loader (resize to 256, crop 224, random crops of a quarter of the area) shows the
teacher views it no longer recognises. The only augmentation offered is what synthesis already
optimised for: horizontal flips and circular shifts up to the preset's jitter (DeepInversion's roll).
The official PRACTISE loader for DeepInversion images likewise only converts, normalises and flips.
"""
from __future__ import annotations

import json
import os
from typing import Optional, Sequence, Tuple

import torch
import torchvision.transforms.functional as TF
from torch.utils.data import Dataset

from .data import decode_image, subsample
from .writer import CONFIG, read_records

__all__ = ['SynthesizedImages', 'read_synth_settings', 'is_synthesized']


def is_synthesized(root: str) -> bool:
    """A folder written by :func:`synth.synthesize` (it holds its settings file)."""
    return os.path.isfile(os.path.join(root, CONFIG))


def read_synth_settings(root: str) -> dict:
    """The settings a synthesized folder was made with (its ``synth_config.json``)."""
    path = os.path.join(root, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{root}' holds no {CONFIG}, so it is not a folder written by synth.synthesize "
                                "(practise-df synth). Load other images with synth.load_images.")
    with open(path) as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"'{path}' is not valid JSON ({e}); synthesize the folder again.") from None


class SynthesizedImages(Dataset):
    """``(image, target class)`` of a synthesized folder, normalised as the teacher saw them.

    Args:
        root: a folder written by :func:`synth.synthesize`.
        input_size: the model's input size ((C, H, W) or an int); a set made at another size is refused.
        mean, std: the model's normalisation; a set made for another one is refused.
        augment: random horizontal flip and circular shift (up to the jitter the set was optimised
            with), drawn from torch's global generator (seed it per item, as finetuning does).
        max_images, seed: keep a seeded subset of this many images.
    """

    def __init__(self, root: str, input_size=None, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None, augment: bool = False, max_images: Optional[int] = None,
                 seed: int = 0):
        settings = read_synth_settings(root)
        self.root, self.augment = root, augment
        self.resolution = int(settings['resolution'])
        self.mean, self.std = list(settings['mean']), list(settings['std'])
        if input_size is not None:
            size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)[-2:]
            if tuple(size) != (self.resolution, self.resolution):
                raise ValueError(
                    f"'{root}' was synthesized at {self.resolution}x{self.resolution} px but the model takes "
                    f"{size[0]}x{size[1]}. Synthesized images are used exactly as optimised, never resized: "
                    f"synthesize them again at {size[-1]} px (practise-df synth --input-size {size[-1]}).")
        for name, given, saved in (('mean', mean, self.mean), ('std', std, self.std)):
            if given is not None and (len(given) != len(saved) or any(abs(a - b) > 1e-6 for a, b in zip(given, saved))):
                raise ValueError(f"'{root}' was synthesized for a model normalised with {name}={saved}, not "
                                 f"{list(given)}: it was made from another teacher. Synthesize from this one.")
        self.records = read_records(root)
        if max_images is not None and max_images < len(self.records):
            self.records = subsample(self.records, max_images, seed)
        if not self.records:
            raise ValueError(f"'{root}' holds no finished synthesized image yet; run the synthesis (again) to "
                             "complete it.")
        self.max_shift = int(round(settings['config'].get('jitter', 0.0) * self.resolution))

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        record = self.records[index]
        image = decode_image(os.path.join(self.root, record['file_name']))
        if image is None:
            raise OSError(f"Synthesized image '{record['file_name']}' in '{self.root}' does not decode; "
                          "delete it and run the synthesis again to remake it.")
        x = TF.normalize(TF.to_tensor(image), self.mean, self.std)
        if self.augment:
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
            if self.max_shift:
                dy, dx = torch.randint(-self.max_shift, self.max_shift + 1, (2,)).tolist()
                x = torch.roll(x, shifts=(dy, dx), dims=(1, 2))
        return x, int(record['target'])
