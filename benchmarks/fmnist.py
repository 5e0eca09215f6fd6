r"""Train the Fashion-MNIST teacher (Track B of ``bench_latency_accuracy.py`` and ``bench_recovery_choice.py``);
the data (the Debian package's IDX files) and the architecture are in ``common.py``.

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
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

# The data and the teacher live in common.py; DATA_CONFIG, FMNIST_DIR, load_fmnist, load_teacher and to_input
# stay importable as fmnist.X for the scripts that read them so.
from common import FMNIST_DATA_CONFIG as DATA_CONFIG
from common import (FMNIST_DIR, FMNIST_TEACHER_KWARGS, FMNIST_TEACHER_SPEC, add_threads_argument, load_fmnist,
                    parse_args, read_results, write_results)
from common import build_fmnist_teacher as build_teacher
from common import fmnist_teacher as load_teacher  # noqa: F401
from common import to_input


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
    add_threads_argument(p)
    args = parse_args(p)
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
            'threads': args.threads, 'spec': FMNIST_TEACHER_SPEC, 'kwargs': FMNIST_TEACHER_KWARGS,
            'maxpool': 'identity',
            'data_config': DATA_CONFIG, 'command': ' '.join(['python'] + sys.argv)}
    previous = os.path.join(os.path.dirname(args.init or ''), 'teacher.json')
    if args.init and os.path.isfile(previous):  # keep the history of the weights we started from
        info['previous'] = read_results(previous)
    write_results(os.path.join(args.out, 'teacher.json'), info)
    print(json.dumps(info))


if __name__ == '__main__':
    main()
