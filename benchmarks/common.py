"""What the benchmark scripts share, each idea defined once: the two teachers (tf_efficientnet_lite0 with its
offline ImageNet weights; the Fashion-MNIST ResNet that ``fmnist.py`` trains), their data (the 1000 images of
../shared/data/imagenet-sample, the out-of-domain photos, Fashion-MNIST), ``--threads``, resumable JSON results
files and markdown tables."""
import argparse
import gzip
import json
import os
import struct
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from practise_df import create_model, evaluate
from practise_df.models import efficientnet_lite0_weights, resolve_data_config
from synth.data import load_image_tensor
from practise_io import write_text_atomic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, 'benchmarks', 'results')
SHARED_DATA = os.path.join(ROOT, '..', 'shared', 'data')
IMAGENET_SAMPLE = os.path.join(SHARED_DATA, 'imagenet-sample')
OOD_PHOTOS = os.path.join(SHARED_DATA, 'ood-photos')


# --- the ImageNet teacher and its images ---

LITE0 = 'timm:tf_efficientnet_lite0'


def lite0_teacher():
    """(tf_efficientnet_lite0 with its offline ImageNet weights in eval mode, its timm data config)."""
    teacher = create_model(LITE0, weights=efficientnet_lite0_weights()).eval()
    return teacher, resolve_data_config(teacher)


def sample_images(data_config, folder: str = IMAGENET_SAMPLE):
    """(images, labels) of every image in ``folder`` with the teacher's evaluation transform."""
    if not os.path.isdir(folder):
        raise SystemExit(f'{folder} not found: these benchmarks evaluate on the imagenet-sample images')
    return load_image_tensor(folder, data_config)


def top1(model, images: torch.Tensor, labels: torch.Tensor, keep=None) -> float:
    """Top-1 (%) on the images, or on those whose index is in ``keep``, rounded to 0.1."""
    index = torch.tensor(sorted(keep)) if keep is not None else torch.arange(len(images))
    return round(evaluate(model, [(images[i], labels[i]) for i in index.split(100)], progress=False)['top1'], 1)


# --- the Fashion-MNIST teacher (trained by fmnist.py) and its data ---

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
FMNIST_TEACHER = 'runs/fmnist_teacher/model.safetensors'
FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530
# A timm-style data config, so practise_df.data transforms and synth.synthesize work with this teacher.
FMNIST_DATA_CONFIG = {'input_size': (3, 32, 32), 'interpolation': 'bilinear', 'mean': (FMNIST_MEAN,) * 3,
                      'std': (FMNIST_STD,) * 3, 'crop_pct': 1.0, 'crop_mode': 'center'}
FMNIST_TEACHER_SPEC = 'timm:resnet18'
FMNIST_TEACHER_KWARGS = {'num_classes': 10, 'channels': (16, 32, 64, 128)}


def read_idx(path: str) -> np.ndarray:
    """One IDX file (optionally gzipped) as a numpy array."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"'{path}' not found. Install Fashion-MNIST with `apt-get install "
                                "dataset-fashion-mnist` (Debian), or pass --fmnist-dir to a folder of the IDX files.")
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack('>HBB', data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"'{path}' is not an unsigned-byte IDX file (magic {data[:4].hex()}).")
    shape = struct.unpack('>' + 'I' * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fmnist(split: str = 'train', root: str = FMNIST_DIR):
    """(images uint8 (N, 28, 28), labels int64 (N,)) as torch tensors; split 'train' or 'test'."""
    prefix = {'train': 'train', 'test': 't10k'}[split]
    images = read_idx(os.path.join(root, f'{prefix}-images-idx3-ubyte.gz'))
    labels = read_idx(os.path.join(root, f'{prefix}-labels-idx1-ubyte.gz'))
    if len(images) != len(labels):
        raise ValueError(f'Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels.')
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


def to_input(images: torch.Tensor, augment: bool = False, generator=None) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalised float (N, 3, 32, 32): zero-pad to 32 (random shift of up to
    2 px and horizontal flip when ``augment``), gray repeated to 3 channels."""
    x = images.float().div(255).unsqueeze(1)
    if augment:
        x = F.pad(x, (4, 4, 4, 4))
        n = len(x)
        dx, dy = torch.randint(0, 5, (2, n), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5
        out = torch.empty(n, 1, 32, 32)
        for i in range(n):
            crop = x[i, :, dy[i]:dy[i] + 32, dx[i]:dx[i] + 32]
            out[i] = crop.flip(-1) if flip[i] else crop
        x = out
    else:
        x = F.pad(x, (2, 2, 2, 2))
    return ((x - FMNIST_MEAN) / FMNIST_STD).expand(-1, 3, -1, -1).contiguous()


class FashionMNISTRGB(Dataset):
    """Fashion-MNIST as RGB PIL images for another model's transform (out-of-domain data for lite0)."""

    def __init__(self, images: torch.Tensor, transform=None):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        image = Image.fromarray(self.images[i].numpy()).convert('RGB')
        return (self.transform(image) if self.transform else image), -1


def build_fmnist_teacher() -> nn.Module:
    """The Fashion-MNIST teacher's architecture with random weights."""
    model = create_model(FMNIST_TEACHER_SPEC, **FMNIST_TEACHER_KWARGS)
    model.maxpool = nn.Identity()  # 32 px input: keep 16x16 after the stem
    return model


def fmnist_teacher(path: str = FMNIST_TEACHER) -> nn.Module:
    """The trained Fashion-MNIST teacher in eval mode."""
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No Fashion-MNIST teacher at '{path}'. Train it first: python benchmarks/fmnist.py")
    model = build_fmnist_teacher()
    model.load_state_dict(load_file(path))
    return model.eval()


# --- command lines ---

def add_threads_argument(parser: argparse.ArgumentParser, default: Optional[int] = 1,
                         help: str = "torch CPU threads (default: %(default)s; None: torch's choice)"):
    parser.add_argument('--threads', type=int, default=default, help=help)


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``; then torch runs on ``--threads`` threads when the script has that flag."""
    args = parser.parse_args(argv)
    if getattr(args, 'threads', None):
        torch.set_num_threads(args.threads)
    return args


def chosen_variants(parser, text: str, variants) -> list:
    """The comma list ``text`` of variant names, each checked against ``variants`` (parser error otherwise)."""
    names = [v for v in text.split(',') if v]
    unknown = [v for v in names if v not in variants]
    if unknown:
        parser.error(f'unknown variants {unknown}; choose from {", ".join(variants)}')
    return names


# --- results files ---

def read_results(path: str, default=None):
    """The JSON results at ``path``, or ``default`` ({} unless given) when there are none yet: scripts resume
    from what an interrupted run wrote."""
    if not os.path.isfile(path):
        return {} if default is None else default
    with open(path) as f:
        return json.load(f)


def write_results(path: str, results, indent: Optional[int] = 2) -> None:
    """Write ``results`` as JSON atomically (a killed run leaves the previous file whole), making the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=indent))


def write_text(path: str, text: str) -> None:
    """Write a markdown (or any text) results file atomically, making the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text_atomic(path, text)


ALIGN = {'l': '---', 'r': '---:', 'c': ':---:'}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], align: str = '') -> list:
    """The lines of a markdown table. ``rows`` hold formatted cells; ``align`` has one letter per column,
    ``l``, ``r`` or ``c`` (default: the first column left, the others right)."""
    align = align or 'l' + 'r' * (len(header) - 1)
    if len(align) != len(header):
        raise ValueError(f'align {align!r} has {len(align)} letters for {len(header)} columns')
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(ALIGN[a] for a in align) + '|']
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f'a row has {len(row)} cells for {len(header)} columns: {row}')
        lines.append('| ' + ' | '.join(str(c) for c in row) + ' |')
    return lines
