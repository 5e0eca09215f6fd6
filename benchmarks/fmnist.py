r"""Fashion-MNIST from the Debian package and a small ResNet teacher trained on it (Track B of
``bench_latency_accuracy.py``).

The teacher is timm's resnet18 at quarter width (channels 16/32/64/128, BasicBlocks [2, 2, 2, 2],
BatchNorm) without the stem max-pool, on 32 px inputs (the 28 px images zero-padded by 2, gray
repeated to 3 channels). Its droppable blocks are layer1.1 ... layer4.1.

    python benchmarks/fmnist.py --threads 1   # writes runs/fmnist_teacher/{model.safetensors,teacher.json}

The committed teacher (benchmarks/results/fmnist_teacher.json, 92.3% test top-1) took three one-cycle runs,
each continuing from the last (teacher.json keeps the chain under "previous"):

    python benchmarks/fmnist.py --threads 1                                                      # 91.1%
    python benchmarks/fmnist.py --threads 1 --init runs/fmnist_teacher/model.safetensors \
        --epochs 2 --lr 0.05 --seed 1                                                            # 91.5%
    python benchmarks/fmnist.py --threads 1 --init runs/fmnist_teacher/model.safetensors \
        --epochs 4 --lr 0.05 --seed 2                                                            # 92.3%
"""
import argparse
import gzip
import json
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from practise_df import create_model

FMNIST_DIR = '/usr/share/datasets/fashion-mnist'
MEAN, STD = 0.2860, 0.3530
# A timm-style data config, so practise_df.data transforms and synth.synthesize work with this teacher.
DATA_CONFIG = {'input_size': (3, 32, 32), 'interpolation': 'bilinear', 'mean': (MEAN,) * 3, 'std': (STD,) * 3,
               'crop_pct': 1.0, 'crop_mode': 'center'}
TEACHER_SPEC = 'timm:resnet18'
TEACHER_KWARGS = {'num_classes': 10, 'channels': (16, 32, 64, 128)}
CLASSES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot')


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
    return ((x - MEAN) / STD).expand(-1, 3, -1, -1).contiguous()


class FashionMNIST(Dataset):
    """(image, label) with the teacher's preprocessing; ``augment`` adds shift + flip."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, augment: bool = False):
        self.images, self.labels, self.augment = images, labels, augment

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return to_input(self.images[i:i + 1], self.augment)[0], int(self.labels[i])


class FashionMNISTRGB(Dataset):
    """Fashion-MNIST as RGB PIL images for another model's transform (out-of-domain data for Track A)."""

    def __init__(self, images: torch.Tensor, transform=None):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image
        image = Image.fromarray(self.images[i].numpy()).convert('RGB')
        return (self.transform(image) if self.transform else image), -1


def build_teacher() -> nn.Module:
    model = create_model(TEACHER_SPEC, **TEACHER_KWARGS)
    model.maxpool = nn.Identity()  # 32 px input: keep 16x16 after the stem
    return model


def load_teacher(path: str = 'runs/fmnist_teacher/model.safetensors') -> nn.Module:
    from safetensors.torch import load_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No Fashion-MNIST teacher at '{path}'. Train it first: python benchmarks/fmnist.py")
    model = build_teacher()
    model.load_state_dict(load_file(path))
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits for uint8 images (N, 28, 28)."""
    model.eval()
    return torch.cat([model(to_input(images[i:i + batch_size])) for i in range(0, len(images), batch_size)])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--fmnist-dir', default=FMNIST_DIR)
    p.add_argument('--out', default='runs/fmnist_teacher')
    p.add_argument('--epochs', type=int, default=5)
    p.add_argument('--batch-size', type=int, default=128)
    p.add_argument('--lr', type=float, default=0.2)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--init', default=None, help='start from these weights (safetensors), e.g. to train longer')
    p.add_argument('--threads', type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from safetensors.torch import save_file

    train_x, train_y = load_fmnist('train', args.fmnist_dir)
    test_x, test_y = load_fmnist('test', args.fmnist_dir)
    model = build_teacher()
    if args.init:
        from safetensors.torch import load_file
        model.load_state_dict(load_file(args.init))
    steps_per_epoch = len(train_x) // args.batch_size
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=args.epochs * steps_per_epoch,
                                                pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(train_x), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch_size:(s + 1) * args.batch_size]
            loss = F.cross_entropy(model(to_input(train_x[idx], augment=True, generator=gen)), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if s % 100 == 0:
                print(f'epoch {epoch} step {s}/{steps_per_epoch} loss {loss.item():.4f} {time.time() - start:.0f}s',
                      flush=True)
        acc = (predict(model, test_x).argmax(1) == test_y).float().mean().item() * 100
        print(f'epoch {epoch}: test top-1 {acc:.2f}%', flush=True)
    os.makedirs(args.out, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(args.out, 'model.safetensors'))
    info = {'test_top1': acc, 'seed': args.seed, 'epochs': args.epochs, 'init': args.init, 'lr': args.lr,
            'seconds': time.time() - start,
            'threads': args.threads, 'spec': TEACHER_SPEC, 'kwargs': TEACHER_KWARGS, 'maxpool': 'identity',
            'data_config': DATA_CONFIG, 'command': ' '.join(['python'] + sys.argv)}
    previous = os.path.join(os.path.dirname(args.init or ''), 'teacher.json')
    if args.init and os.path.isfile(previous):  # keep the history of the weights we started from
        with open(previous) as f:
            info['previous'] = json.load(f)
    with open(os.path.join(args.out, 'teacher.json'), 'w') as f:
        json.dump(info, f, indent=2)
    print(json.dumps(info))


if __name__ == '__main__':
    main()
