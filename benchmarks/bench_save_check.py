"""What does ``save_compressed``'s rebuild check cost, and does it catch issue 29's model?

For each ImageNet-size model (random weights, one block dropped): the median wall time of ``save_compressed``
with the check (rebuild from what would be written, one forward pass of each model on a random batch of 2)
and with the check replaced by a no-op. Then issue 29's case: timm resnet18 at quarter width with its stem
max-pool replaced by ``nn.Identity`` after construction, which the check must refuse (it saved and reloaded
as another network before).

    python benchmarks/bench_save_check.py --output benchmarks/results/save_check.json
"""
import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time

import torch
import torch.nn as nn

import practise_df.checkpoint as checkpoint
from practise_df import create_model, drop_blocks, find_blocks, save_compressed

from common import write_results

MODELS = ('timm:resnet50', 'timm:tf_efficientnet_lite0', 'torchvision:mobilenet_v2')


def time_saves(model, repeats: int, check: bool) -> float:
    original = checkpoint.check_rebuilds
    if not check:
        checkpoint.check_rebuilds = lambda *args: None
    times = []
    try:
        for _ in range(repeats):
            folder = tempfile.mkdtemp()
            start = time.perf_counter()
            save_compressed(model, os.path.join(folder, 'model'))
            times.append(time.perf_counter() - start)
            shutil.rmtree(folder)
    finally:
        checkpoint.check_rebuilds = original
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--output', default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for spec in MODELS:
        teacher = create_model(spec)
        student = drop_blocks(teacher, find_blocks(teacher)[:1])
        with_check, without = time_saves(student, args.repeats, True), time_saves(student, args.repeats, False)
        rows.append({'model': spec, 'save_s_with_check': round(with_check, 3), 'save_s_without': round(without, 3),
                     'check_s': round(with_check - without, 3)})
        print(rows[-1], flush=True)
    changed = create_model('timm:resnet18', channels=(16, 32, 64, 128), num_classes=5)
    changed.maxpool = nn.Identity()
    folder = tempfile.mkdtemp()
    try:
        save_compressed(changed, os.path.join(folder, 'model'))
        issue_case = 'saved (NOT refused)'
    except ValueError as e:
        issue_case = f'refused: {e}'
    written = os.listdir(folder)
    shutil.rmtree(folder)
    print(issue_case, '| written:', written)
    result = {'rows': rows, 'issue29_case': issue_case, 'written_on_refusal': written, 'repeats': args.repeats,
              'threads': torch.get_num_threads(), 'cpu': platform.processor() or platform.machine(),
              'torch': torch.__version__, 'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}
    if args.output:
        write_results(args.output, result)


if __name__ == '__main__':
    main()
