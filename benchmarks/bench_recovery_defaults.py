"""compress's recovery defaults, end to end, on Track B (issue 31): what a user who runs ``compress`` with
nothing but the blocks to drop gets, against the dropped-only student, on the Fashion-MNIST ResNet.

For each pinned block set of ``bench_recovery_choice.py`` (~15% and ~26% latency saved) and each seed, one
``practise_df.compress`` run with compress's defaults (256 synthesized images, a quarter held out, MiR at the
default learning rate, the recovery choice over the default mixes and signal), except the finetuning length
(300 steps of 64, as Track B's candidates) and a short latency measurement (accuracy is the question here).
The teacher enters as a ``py:`` factory (``benchmarks/common.py:build_fmnist_teacher``), as a user's own
network would. Top-1 on the 10k test images of the student compress shipped (``model/``) and of the dropped
one (``dropped/``), each run's recovery table, and the paired standard error of the difference.

    python benchmarks/bench_recovery_defaults.py --seeds 0 --out benchmarks/results/recovery_defaults_B_s0.json
    python benchmarks/bench_recovery_defaults.py --seeds 1 --out benchmarks/results/recovery_defaults_B_s1.json
    python benchmarks/bench_recovery_defaults.py --analyse --out benchmarks/results/recovery_defaults_B_s*.json

Resumable: a finished run is skipped, an unfinished one resumes (``compress(resume=True)``).
"""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform

import torch

from bench_recovery_choice import TRACKS
from common import (FMNIST_DATA_CONFIG, FMNIST_TEACHER, ROOT, add_threads_argument, load_fmnist, parse_args,
                    read_results, to_input, write_results)

from practise_df import CompressConfig, compress, load_compressed
from practise_df.finetune import DEFAULT_LR
from practise_df.recovery import MIN_Z, MIXES, SIGNAL, SIGNAL_IMAGE_SOURCE

TEACHER = f"py:{os.path.join(ROOT, 'benchmarks', 'common.py')}:build_fmnist_teacher"


def config(point: str, seed: int, out: str, steps: int) -> CompressConfig:
    dc = FMNIST_DATA_CONFIG
    return CompressConfig(
        model=TEACHER, weights=os.path.join(ROOT, FMNIST_TEACHER), output_dir=out, seed=seed,
        input_size=dc['input_size'][-1], mean=list(dc['mean']), std=list(dc['std']),
        interpolation=dc['interpolation'], crop_pct=dc['crop_pct'],
        scoring={'blocks': TRACKS['B']['points'][point]['blocks']},
        latency={'repeats': 3}, finetune={'steps': steps})


def paired_se(a: torch.Tensor, b: torch.Tensor) -> float:
    d = a.double() - b.double()
    return 100 * d.std().item() / math.sqrt(len(d))


def run(args) -> None:
    results = read_results(args.out[0], {'runs': {}})
    results['setup'] = {
        'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}',
        'threads': torch.get_num_threads(), 'steps': args.steps, 'lr': DEFAULT_LR['mir'], 'mixes': MIXES,
        'signal': SIGNAL, 'signal_images': SIGNAL_IMAGE_SOURCE, 'min_z': MIN_Z,
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}
    test_x, test_y = load_fmnist('test')
    test = to_input(test_x)
    for point in TRACKS['B']['points']:
        for seed in args.seeds:
            key = f'{point}|s{seed}'
            if key in results['runs']:
                continue
            out = os.path.join(ROOT, 'runs', 'recovery_defaults_B', f'{point}_s{seed}')
            report = compress(config(point, seed, out, args.steps), resume=os.path.isdir(out), progress=False)
            with torch.no_grad():
                right = {name: (load_compressed(os.path.join(out, folder)).eval()(test).argmax(1) == test_y)
                         for name, folder in (('shipped', 'model'), ('dropped', 'dropped'))}
            results['runs'][key] = {
                'point': point, 'seed': seed, 'kept': report.recovery['kept'],
                'top1': {k: 100 * v.float().mean().item() for k, v in right.items()},
                'paired_se': paired_se(right['shipped'], right['dropped']),
                'candidates': [{k: c[k] for k in ('name', 'mix', 'closeness', 'gain', 'gain_se', 'z')}
                               for c in report.recovery['candidates']]}
            write_results(args.out[0], results)
            r = results['runs'][key]
            print(f"{key}: kept {r['kept']}: top-1 {r['top1']['shipped']:.2f} vs dropped {r['top1']['dropped']:.2f} "
                  f"(paired SE {r['paired_se']:.2f})", flush=True)


def analyse(paths) -> None:
    runs = [r for p in paths for r in read_results(p)['runs'].values()]
    best = {p: max(c['top1'] for c in read_results(os.path.join(ROOT, 'benchmarks', 'results',
                                                              'recovery_choice_B.json'))['candidates'].values()
                   if c['point'] == p) for p in TRACKS['B']['points']}
    print('| point | seed | kept | dropped only | compress defaults | gain | paired SE |')
    print('|---|---:|---|---:|---:|---:|---:|')
    for r in sorted(runs, key=lambda r: (r['point'], r['seed'])):
        t = r['top1']
        print(f"| {r['point']} | {r['seed']} | {r['kept']} | {t['dropped']:.2f} | {t['shipped']:.2f} | "
              f"{t['shipped'] - t['dropped']:+.2f} | {r['paired_se']:.2f} |")
    for point in TRACKS['B']['points']:
        mine = [r for r in runs if r['point'] == point]
        if mine:
            gain = sum(r['top1']['shipped'] - r['top1']['dropped'] for r in mine) / len(mine)
            dropped = sum(r['top1']['dropped'] for r in mine) / len(mine)
            print(f"{point}: mean gain {gain:+.2f} over {len(mine)} seed(s); the best candidate of "
                  f"bench_recovery_choice (best seed) is {best[point] - dropped:+.2f} over this dropped mean")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--steps', type=int, default=300, help="finetuning steps (Track B's candidates: 300)")
    p.add_argument('--out', nargs='+', default=[os.path.join(ROOT, 'benchmarks', 'results',
                                                             'recovery_defaults_B.json')])
    p.add_argument('--analyse', action='store_true', help='print the table of --out (one or more files) and exit')
    add_threads_argument(p)
    args = parse_args(p)
    if args.analyse:
        analyse(args.out)
    else:
        run(args)
        analyse(args.out)


if __name__ == '__main__':
    main()
