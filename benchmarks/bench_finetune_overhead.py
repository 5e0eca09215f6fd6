"""Finetuning throughput: practise_df.finetune (Accelerate) vs a bare PyTorch loop doing the same math.

Same student (tf_efficientnet_lite0 with two blocks dropped), same teacher, same batches, same
optimizer and schedule; MiR loss. Images/s over the steps after a warm-up, several rounds
alternating the two loops so machine drift hits both. Writes --out (JSON).

    python benchmarks/bench_finetune_overhead.py --out benchmarks/results/finetune_overhead.json
"""
import argparse
import json
import os
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from practise_df import create_model, drop_blocks  # noqa: E402
from practise_df.models import PrePoolFeatures  # noqa: E402
from practise_df.finetune import FinetuneConfig, finetune, make_accelerator  # noqa: E402
from practise_df.models import classifier_parameters  # noqa: E402

from common import add_threads_argument, parse_args, write_results  # noqa: E402


def bare_loop(student, teacher, data, config, warmup):
    for p in classifier_parameters(student):
        p.requires_grad_(False)
    feats, tfeats = PrePoolFeatures(student), PrePoolFeatures(teacher)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, max(1, int(config.step_at * config.steps)), 0.1)
    loader = DataLoader(data, batch_size=config.batch_size, shuffle=True, drop_last=True)
    student.train()
    teacher.eval()
    stamps = []
    step = 0
    while step < config.steps:
        for x, _ in loader:
            with torch.no_grad():
                target = tfeats(x)
            loss = F.mse_loss(feats(x), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss.item()  # the Accelerate loop reads the loss every step too
            step += 1
            stamps.append(time.perf_counter())
            if step >= config.steps:
                break
    return config.batch_size * (len(stamps) - 1 - warmup) / (stamps[-1] - stamps[warmup])


def accelerate_loop(student, teacher, data, config, warmup):
    stamps = []
    acc = make_accelerator(None, config, cpu=True)
    finetune(student, teacher, data, config, accelerator=acc, progress=False,
             on_step=lambda step, loss: stamps.append(time.perf_counter()))
    return config.batch_size * (len(stamps) - 1 - warmup) / (stamps[-1] - stamps[warmup])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--resolution', type=int, default=160)
    p.add_argument('--batch-size', type=int, default=16)
    p.add_argument('--iterations', type=int, default=12)
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--rounds', type=int, default=3)
    add_threads_argument(p, default=None)
    p.add_argument('--out', default='benchmarks/results/finetune_overhead.json')
    args = parse_args(p)

    torch.manual_seed(0)
    teacher = create_model('timm:tf_efficientnet_lite0')
    data = TensorDataset(torch.randn(args.batch_size * args.iterations, 3, args.resolution, args.resolution),
                         torch.zeros(args.batch_size * args.iterations, dtype=torch.long))
    config = FinetuneConfig(steps=args.iterations, batch_size=args.batch_size)
    rates = {'bare': [], 'practise_df': []}
    for _ in range(args.rounds):
        for name, loop in (('bare', bare_loop), ('practise_df', accelerate_loop)):
            student = drop_blocks(teacher, ['blocks.3.2', 'blocks.5.3'])
            rates[name].append(loop(student, teacher, data, config, args.warmup))
            print(name, f'{rates[name][-1]:.2f} images/s', flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {'machine': f'{platform.machine()} {os.cpu_count()} cores, torch {torch.__version__}, '
                         f'{torch.get_num_threads()} thread(s)',
              'date': time.strftime('%Y-%m-%d'), 'args': vars(args), 'images_per_s': rates,
              'median_images_per_s': med, 'overhead_pct': 100 * (1 - med['practise_df'] / med['bare'])}
    write_results(args.out, result)
    print(json.dumps(result['median_images_per_s']), f"overhead {result['overhead_pct']:.1f}%")


if __name__ == '__main__':
    main()
