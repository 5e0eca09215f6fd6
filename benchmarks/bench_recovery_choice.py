"""Which recovered student to keep, and by which label-free signal (issue 31), on both tracks.

Track B (``--track B``, the default): the Fashion-MNIST ResNet of ``benchmarks/fmnist.py`` at two pinned block
sets (~15% and ~26% latency saved, measured idle on 2026-11-26, ``latency_accuracy_B.json``), top-1 on the 10k
test images. Track A (``--track A``): tf_efficientnet_lite0 with its ImageNet weights at issue 14's two pinned
block sets (BENCHMARKS "Data-free recovery against plain dropping"), top-1 on all 1000 imagenet-sample images
(none is trained on: the run is data-free); KD is left out there, and the pools, steps and iterations are
smaller (``TRACKS['A']['defaults']``), to fit two CPU cores. For each seed:

- a pool of synthesized images (DeepInversion, the teacher's BatchNorm statistics) to finetune on, and a
  second synthesis batch with another seed that finetuning never sees (the signal images);
- candidates: the dropped student; MiR at lr 0.02 (official) and 0.002 (compress's default) and KD at 0.002,
  each finetuned once with BatchNorm statistics frozen and then interpolated with the dropped student
  (WiSE-FT ``mix`` 0.1, 0.25, 0.5, 1: no retraining);
- each candidate's real top-1 on the 10k test images (per image, for paired standard errors), and its
  closeness to the teacher (KL, top-1 agreement, feature MSE) on three label-free image sets: the held-out
  synthesis batch, the held-out quarter of the training pool (what compress holds out for scoring), and
  crops of scikit-image's sample photos (the guard's default).

Every finished candidate is written to ``--out`` at once and skipped on a re-run (resumable); synthesized
images and finetuned weights are cached under ``--cache``. ``--analyse`` prints, for every selection rule,
how often it picks the candidate with the higher real top-1 over all candidate pairs (a pair within one
paired standard error counts right either way; both counts are reported).

    python benchmarks/bench_recovery_choice.py --threads 1                  # Track B, ~1-2 h on one core
    python benchmarks/bench_recovery_choice.py --analyse                    # the decision tables
    python benchmarks/bench_recovery_choice.py --track A --seeds 0 --out benchmarks/results/recovery_choice_A_s0.json
    python benchmarks/bench_recovery_choice.py --track A --seeds 1 --out benchmarks/results/recovery_choice_A_s1.json
    python benchmarks/bench_recovery_choice.py --analyse --out benchmarks/results/recovery_choice_A_s*.json
    python benchmarks/bench_recovery_choice.py --analyse --out benchmarks/results/recovery_choice_{B,A_s0,A_s1}.json
"""
from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import platform
import sys
import time

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset, TensorDataset

import fmnist
from common import lite0_teacher, sample_images

import practise_df as pdf
from practise_df.finetune import FinetuneConfig, finetune, interpolate_weights, make_accelerator
from practise_df.guard import closeness
from practise_df.recovery import MIN_Z, choose
from synth import SynthesizedImages, synthesize
from synth.ood import photo_crops

TRACKS = {
    'B': {  # pinned block sets; saved_pct: idle re-measurement of 2026-11-26 (latency_accuracy_B.json)
        'points': {'p15': {'blocks': ['layer4.1', 'layer2.1'], 'saved_pct': 16.1},
                   'p26': {'blocks': ['layer4.1', 'layer2.1', 'layer1.1'], 'saved_pct': 26.7}},
        'runs': {  # one finetuning each; its mixes come from interpolation
            'mir_lr0.02': {'loss': 'mir', 'lr': 0.02},
            'mir_lr0.002': {'loss': 'mir', 'lr': 0.002},
            'kd_lr0.002': {'loss': 'kd', 'lr': 0.002}},
        'defaults': dict(images=256, signal_images=128, synth_steps=None, iterations=300, batch_size=64,
                         out='benchmarks/results/recovery_choice_B.json', cache='runs/recovery_choice_B')},
    'A': {  # issue 14's pinned sets (BENCHMARKS "Data-free recovery against plain dropping"): 15.2% and 25.5% saved
        'points': {'p15': {'blocks': ['blocks.4.2', 'blocks.1.1'], 'saved_pct': 15.2},
                   'p25': {'blocks': ['blocks.1.1', 'blocks.3.2', 'blocks.3.1', 'blocks.2.1', 'blocks.4.2'],
                           'saved_pct': 25.5}},
        'runs': {'mir_lr0.02': {'loss': 'mir', 'lr': 0.02}, 'mir_lr0.002': {'loss': 'mir', 'lr': 0.002}},
        'defaults': dict(images=32, signal_images=16, synth_steps=200, iterations=100, batch_size=32,
                         out='benchmarks/results/recovery_choice_A.json', cache='runs/recovery_choice_A')},
}
POINTS, RUNS = TRACKS['B']['points'], TRACKS['B']['runs']  # main() sets them by --track
MIXES = (0.1, 0.25, 0.5, 1.0)
SIGNAL_SETS = ('synth_heldout', 'pool_heldout', 'photos')
SIGNALS = {'kl': -1, 'agreement': +1, 'feature_mse': -1}  # +1: higher is closer to the teacher


def _read(path):
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _write(path, obj):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + '.partial', 'w') as f:
        json.dump(obj, f)
    os.replace(path + '.partial', path)


class Bench:
    def __init__(self, args):
        self.args = args
        if args.track == 'B':
            self.teacher = fmnist.load_teacher(args.teacher)
            self.dc = fmnist.DATA_CONFIG
            test_x, self.test_y = fmnist.load_fmnist('test', args.fmnist_dir)
            self.test = fmnist.to_input(test_x)
        else:
            self.teacher, self.dc = lite0_teacher()
            self.test, self.test_y = sample_images(self.dc)
        if args.quick:
            self.test, self.test_y = self.test[:500], self.test_y[:500]
        self.accelerator = make_accelerator(None, FinetuneConfig())
        self.results = _read(args.out)
        self.results.setdefault('candidates', {})
        self.results['setup'] = {
            'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}',
            'threads': torch.get_num_threads(), 'command': 'python ' + ' '.join(sys.argv),
            'track': args.track, 'pool': args.images, 'signal_images': args.signal_images,
            'synth_steps': args.synth_steps,
            'iterations': args.iterations, 'batch_size': args.batch_size, 'points': POINTS, 'runs': RUNS,
            'mixes': MIXES, 'test_images': len(self.test_y),
            'started': self.results.get('setup', {}).get('started') or datetime.datetime.now(
                datetime.timezone.utc).isoformat(timespec='minutes')}

    def synth(self, name, n, seed):
        out = os.path.join(self.args.cache, name)
        if not os.path.isfile(os.path.join(out, 'metadata.jsonl')):
            synthesize(self.teacher, out, n, data_config=self.dc, batch_size=min(64, n), seed=seed,
                       steps=self.args.synth_steps, progress=False)
        return out

    def images(self, seed):
        pool_dir = self.synth(f'pool_s{seed}', self.args.images, seed)
        signal_dir = self.synth(f'signal_s{seed}', self.args.signal_images, 1000 + seed)
        read = dict(input_size=self.dc['input_size'], mean=self.dc['mean'], std=self.dc['std'])
        pool = SynthesizedImages(pool_dir, **read)
        train_pool = SynthesizedImages(pool_dir, augment=True, **read)
        # compress's split: a quarter of the pool held out (scoring and, here, a signal), the rest trains
        perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
        held, train = sorted(perm[:len(pool) // 4]), sorted(perm[len(pool) // 4:])
        signal = SynthesizedImages(signal_dir, **read)
        stack = lambda ds, idx: torch.stack([ds[i][0] for i in idx])  # noqa: E731
        sets = {'synth_heldout': stack(signal, range(len(signal))), 'pool_heldout': stack(pool, held),
                'photos': photo_crops(self.dc, seed=seed)}
        return Subset(train_pool, train), sets

    @torch.no_grad()
    def correct(self, model):
        model.eval()
        hits = [(model(x).argmax(1) == y) for x, y in DataLoader(TensorDataset(self.test, self.test_y),
                                                                  batch_size=100)]
        return ''.join(map(str, torch.cat(hits).to(torch.uint8).tolist()))  # '1': right; compact in the JSON

    def finetuned(self, point, run, seed, dropped, train):
        path = os.path.join(self.args.cache, f'{point}_{run}_s{seed}.safetensors')
        student = pdf.drop_blocks(self.teacher, POINTS[point]['blocks'])
        if os.path.isfile(path):
            student.load_state_dict(load_file(path))
            return student, 0.0
        cfg = FinetuneConfig(steps=self.args.iterations, batch_size=self.args.batch_size, freeze_bn=True,
                             seed=seed, **RUNS[run])
        start = time.perf_counter()
        finetune(student, self.teacher, train, cfg, accelerator=self.accelerator, progress=False)
        self.accelerator.free_memory()
        seconds = time.perf_counter() - start
        save_file({k: v.contiguous() for k, v in student.state_dict().items()}, path)
        return student, seconds

    def record(self, key, model, sets, extra):
        if key in self.results['candidates']:
            return
        model.eval()
        correct = self.correct(model)
        signals = {name: {s: v.mean().item() for s, v in closeness(model, self.teacher, images).items()}
                   for name, images in sets.items()}
        per_image = {name: [float(f'{v:.5g}') for v in closeness(model, self.teacher, images)['kl'].tolist()]
                     for name, images in sets.items()}
        self.results['candidates'][key] = {**extra, 'top1': 100 * correct.count('1') / len(correct),
                                           'correct': correct,
                                           'signals': signals, 'kl_per_image': per_image}
        _write(self.args.out, self.results)
        print(f"{key}: top-1 {self.results['candidates'][key]['top1']:.2f}  "
              + '  '.join(f"{n} kl {signals[n]['kl']:.4f}" for n in sets), flush=True)

    def run(self):
        for seed in self.args.seeds:
            train, sets = self.images(seed)
            for point in POINTS:
                dropped = pdf.drop_blocks(self.teacher, POINTS[point]['blocks'])
                start = {k: v.clone() for k, v in dropped.state_dict().items()}
                base = {'point': point, 'seed': seed}
                self.record(f'{point}|s{seed}|dropped', dropped, sets, {**base, 'run': 'dropped', 'mix': 0.0})
                for run in RUNS:
                    keys = [f'{point}|s{seed}|{run}|mix{m:g}' for m in MIXES]
                    if all(k in self.results['candidates'] for k in keys):
                        continue
                    student, seconds = self.finetuned(point, run, seed, dropped, train)
                    finished = {k: v.clone() for k, v in student.state_dict().items()}
                    for mix, key in zip(MIXES, keys):
                        student.load_state_dict(finished)
                        interpolate_weights(student, start, mix)
                        self.record(key, student, sets, {**base, 'run': run, 'mix': mix, 'finetune_s': seconds})
        self.results['setup']['finished'] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='minutes')
        _write(self.args.out, self.results)


# -- the decisions --------------------------------------------------------------------------------------------
def paired_se(a, b):
    """Standard error (in top-1 points) of the difference of two students' accuracies on the same images."""
    d = [int(x) - int(y) for x, y in zip(a, b)]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1)
    return 100 * math.sqrt(var / n)


def rule_picks(rule, a, b):
    """The candidate ``rule`` keeps of the pair (a, b): rules score each candidate by one signal on one image
    set; 'zN' rules keep the candidate nearer the dropped student unless the other is closer by N SE."""
    name, signal, mode = rule
    sa, sb = SIGNALS[signal] * a['signals'][name][signal], SIGNALS[signal] * b['signals'][name][signal]
    if mode == 'mean':
        return a if sa >= sb else b
    # paired z on per-image KL: the candidate with more finetuning must be clearly closer
    far, near = (a, b) if a['mix'] > b['mix'] else (b, a)
    ka, kb = torch.tensor(far['kl_per_image'][name]), torch.tensor(near['kl_per_image'][name])
    gain = (kb - ka).double()  # > 0: the more-finetuned one is closer
    se = gain.std().item() / math.sqrt(gain.numel())
    return far if se > 0 and gain.mean().item() / se > float(mode[1:]) else near


def compress_keeps(group, images='photos', lr=None, min_z=MIN_Z):
    """What compress keeps among a point's candidates, by compress's own rule (:func:`practise_df.recovery.choose`
    on the per-image KL on ``images``): the finetuned candidate (of learning rate ``lr``; None: any) with the
    largest gain over the dropped student among those closer by more than ``min_z`` paired SEs, else the dropped
    student."""
    dropped = next(c for c in group if c['run'] == 'dropped')
    pool = [c for c in group if c['run'] != 'dropped' and (lr is None or c['run'] == f'mir_lr{lr:g}')]
    per_image = {c['key']: {'kl': torch.tensor(c['kl_per_image'][images])} for c in [dropped, *pool]}
    kept = choose(per_image, 'kl', min_z, base=dropped['key'])[0]
    return next(c for c in group if c['key'] == kept)


def analyse(paths):
    cands = {}
    for path in paths:
        data = _read(path)
        track = data['setup'].get('track', 'B')
        cands.update({f'{track}|{k}': {**v, 'track': track} for k, v in data['candidates'].items()})
    groups = {}
    for key, c in cands.items():
        groups.setdefault((c['track'], c['point'], c['seed']), []).append({**c, 'key': key})
    rules = [(name, s, 'mean') for name in SIGNAL_SETS for s in SIGNALS] + \
            [(name, 'kl', f'z{z}') for name in SIGNAL_SETS for z in (1, 2)]
    tracks = sorted({c['track'] for c in cands.values()})
    lines = [f"| rule | {' | '.join(f'track {t}: right (strict / ties within 1 SE either way)' for t in tracks)} | "
             'all: strict | all: ties either way |', '|---|' + '---:|' * (len(tracks) + 2)]
    table = {}
    for rule in rules:
        counts = {t: [0, 0, 0] for t in tracks}  # strict, loose, pairs
        for (track, _, _), group in groups.items():
            for a, b in itertools.combinations(group, 2):
                pick = rule_picks(rule, a, b)
                other = b if pick is a else a
                se = paired_se(a['correct'], b['correct'])
                counts[track][0] += pick['top1'] >= other['top1']
                counts[track][1] += pick['top1'] >= other['top1'] - se
                counts[track][2] += 1
        strict, loose, n = (sum(c[i] for c in counts.values()) for i in range(3))
        name = '/'.join(rule)
        table[name] = {'strict': strict, 'loose': loose, 'pairs': n, 'by_track': counts}
        per_track = ' | '.join(f'{c[0]}/{c[2]} ({100 * c[0] / c[2]:.0f}%) / {c[1]} ({100 * c[1] / c[2]:.0f}%)'
                               for c in counts.values())
        lines.append(f'| {name} | {per_track} | {100 * strict / n:.1f}% | {100 * loose / n:.1f}% |')
    # what a rule keeps among all candidates of a point and seed, and the share of the best gain it keeps
    points = sorted({(c['track'], c['point']) for c in cands.values()})
    keepers = {'/'.join(r): (lambda g, r=r: max(g, key=lambda c: SIGNALS[r[1]] * c['signals'][r[0]][r[1]]))
               for r in rules if r[2] == 'mean'}
    for images in ('pool_heldout', 'photos'):
        for min_z in (2.0, 0.0):  # the guard's old floor, and none
            for lr in (None, 0.02, 0.002):
                which = 'any lr' if lr is None else f'lr {lr:g}'
                keepers[f'compress rule: {images}/kl, gain > {min_z:g} SE, {which}'] = \
                    lambda g, images=images, lr=lr, min_z=min_z: compress_keeps(g, images, lr=lr, min_z=min_z)
    lines += ['', f"| rule | {' | '.join(f'kept at {t} {p} (seeds)' for t, p in points)} | "
                  f"{' | '.join(f'track {t}: share of the best gain (mean)' for t in tracks)} | "
                  'worst gain vs dropped, in paired SEs |',
              '|---|' + '---|' * len(points) + '---:|' * (len(tracks) + 1)]
    for name, keep in keepers.items():
        kept, shares, worst = {}, {t: [] for t in tracks}, math.inf
        for (track, point, _), group in sorted(groups.items()):
            best = keep(group)
            dropped = next(c for c in group if c['run'] == 'dropped')
            top = max(c['top1'] for c in group)
            kept.setdefault((track, point), []).append(f"{best['run']} {best['mix']:g}: {best['top1']:.2f}")
            shares[track].append((best['top1'] - dropped['top1']) / (top - dropped['top1'])
                                 if top > dropped['top1'] else 1)
            se = paired_se(best['correct'], dropped['correct']) if best is not dropped else math.inf
            worst = min(worst, (best['top1'] - dropped['top1']) / se if se else 0.0)
        lines.append(f"| {name} | {' | '.join('; '.join(kept.get(p, [])) for p in points)} | "
                     f"{' | '.join(f'{100 * sum(v) / len(v):.0f}%' for v in shares.values())} | "
                     f"{'-' if worst == math.inf else f'{worst:+.1f}'} |")
    # per point: every candidate's mean top-1 over seeds
    lines += ['', '| track | point | candidate | top-1 (mean of seeds) | gain over dropped |',
              '|---|---|---|---:|---:|']
    by = {}
    for c in cands.values():
        by.setdefault((c['track'], c['point'], c['run'], c['mix']), []).append(c['top1'])
    for (track, point, run, mix), tops in sorted(by.items()):
        base = by[(track, point, 'dropped', 0.0)]
        mean = sum(tops) / len(tops)
        lines.append(f'| {track} | {point} | {run} mix {mix:g} | {mean:.2f} ({len(tops)} seeds) | '
                     f'{mean - sum(base) / len(base):+.2f} |')
    print('\n'.join(lines))
    return table


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--teacher', default='runs/fmnist_teacher/model.safetensors')
    p.add_argument('--fmnist-dir', default=fmnist.FMNIST_DIR)
    p.add_argument('--track', choices=sorted(TRACKS), default='B')
    p.add_argument('--out', nargs='+', default=None, help="results file (--analyse: one or more); default: the track's")
    p.add_argument('--cache', default=None, help="synthesized images and finetuned weights; default: the track's")
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    p.add_argument('--images', type=int, help='synthesized images to finetune on (a quarter held out)')
    p.add_argument('--signal-images', type=int, help='a second synthesis batch, never trained on')
    p.add_argument('--synth-steps', type=int, help="synthesis steps (None: the 'fast' preset's)")
    p.add_argument('--iterations', type=int)
    p.add_argument('--batch-size', type=int)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--quick', action='store_true', help='smoke run: 500 test images, tiny pools, 3 iterations')
    p.add_argument('--analyse', action='store_true', help='print the decision tables of --out and exit')
    args = p.parse_args()
    global POINTS, RUNS
    POINTS, RUNS = TRACKS[args.track]['points'], TRACKS[args.track]['runs']
    for k, v in TRACKS[args.track]['defaults'].items():  # the track's sizes unless given
        if getattr(args, k) is None:
            setattr(args, k, [v] if k == 'out' else v)
    if args.analyse:
        analyse(args.out)
        return
    if len(args.out) != 1:
        p.error('--out takes one file when running (several only with --analyse)')
    args.out = args.out[0]
    torch.set_num_threads(args.threads)
    if args.quick:
        args.images, args.signal_images, args.synth_steps, args.iterations = 16, 8, 4, 3
    Bench(args).run()
    analyse([args.out])


if __name__ == '__main__':
    main()
