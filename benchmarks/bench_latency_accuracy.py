"""Latency saved vs accuracy: PRACTISE against other block choices, filter pruning and finetuning losses.

Track A: tf_efficientnet_lite0 (offline ImageNet weights) on the 1000 images of ../shared/data/imagenet-sample.
Track B: the Fashion-MNIST teacher of ``benchmarks/fmnist.py`` on the 10k test images, several seeds.

Each row: a block choice (or filter pruning) reaching a measured CPU latency saving target, optionally
finetuned (MiR or logit KD) on synthesized (BatchNorm inversion) or out-of-domain images, then evaluated.
Data sets, scores, teacher outputs and block choices are computed once and cached under ``--cache``;
every finished row is saved in ``--out`` at once and skipped on a re-run (resumable). Rows not started
before ``--deadline`` are listed as not run.

    python benchmarks/bench_latency_accuracy.py --track B --threads 1
    python benchmarks/bench_latency_accuracy.py --track A --threads 1
    python benchmarks/bench_latency_accuracy.py --track B --quick      # smoke run, separate files
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time

import torch
import torchvision.transforms as T
from torch.utils.data import DataLoader, TensorDataset

import practise_df as pdf
from practise_df import baselines, latency
from synth.data import (
    ImageFolderDataset,
    eval_transform,
    load_image_tensor,
    split_tensor,
    train_transform,
)
from practise_df.finetune import FinetuneConfig, finetune, make_accelerator
from synth import SingleImageCrops, SynthesizedImages, synthesize
from practise_df.latency import measure_latencies
from practise_df.scoring import BlockScore, score_blocks

from common import (FMNIST_DATA_CONFIG, FMNIST_DIR, FMNIST_TEACHER, IMAGENET_SAMPLE, OOD_PHOTOS, add_threads_argument,
                    fmnist_teacher, lite0_teacher, load_fmnist, markdown_table, parse_args, read_results, to_input,
                    write_results, write_text)

HERE = os.path.dirname(os.path.abspath(__file__))

METHODS = ('practise', 'first-k', 'random', 'output-diff', 'filter-l1')
SCORED = ('practise', 'output-diff')  # their block choice depends on the images they are scored on


class Evaluator:
    """practise_df.evaluate on a fixed preprocessed tensor; the teacher runs once, its predictions are reused."""

    def __init__(self, teacher, images, labels, batch_size=100):
        self.loader = DataLoader(TensorDataset(images, labels), batch_size=batch_size)
        start = time.perf_counter()
        out = pdf.evaluate(teacher, self.loader, return_predictions=True, progress=False)
        self.teacher_pred = out.pop('predictions')
        self.teacher_metrics = {**out, 'agreement': 100.0, 'eval_s': time.perf_counter() - start}

    def __call__(self, model):
        out = pdf.evaluate(model, self.loader, teacher=self.teacher_pred, progress=False)
        return {k: out[k] for k in ('top1', 'top5', 'agreement')}


class Track:
    """What differs between the tracks: teacher, images, evaluation, sizes."""

    def __init__(self, args):
        self.args, self.quick = args, args.quick
        self.cache = read_results(self._cache_file)

    @property
    def _cache_file(self):
        return os.path.join(self.args.cache, 'cache.json')

    def cached(self, key, compute):
        if key not in self.cache:
            self.cache[key] = compute()
            write_results(self._cache_file, self.cache, indent=1)
        return self.cache[key]

    # -- latency --------------------------------------------------------------------------------------
    def latency_saved(self, model):
        base, after = measure_latencies([self.teacher, model], **self.lat_kw)
        return 100 * (1 - after.median_ms / base.median_ms), base.median_ms, after.median_ms

    # -- block choice ---------------------------------------------------------------------------------
    def choice(self, method, data, target, seed):
        """{'blocks': [...]} or {'ratio': r} reaching ``target`` saved, with its latency, cached."""
        choice_seed = seed if method == 'random' else self.data_seed(seed) if method in SCORED else 0
        key = f'choice|{method}|{data if method in SCORED else "-"}|{target}|{choice_seed}'

        def compute():
            start = time.perf_counter()
            out = {}
            if method == 'filter-l1':
                _, ratio, _ = baselines.filter_prune_to_latency(self.teacher, target, self.input_size, self.lat_kw,
                                                          steps=2 if self.quick else 5)
                out['ratio'] = ratio
            else:
                if method == 'practise':
                    order = [s.block for s in sorted(self.scores(data, seed), key=lambda s: s.score)]
                elif method == 'output-diff':
                    order = baselines.output_difference(self.scores(data, seed))
                elif method == 'first-k':
                    order = baselines.first_blocks(self.candidates, len(self.candidates))
                else:
                    order = baselines.random_blocks(self.candidates, len(self.candidates), seed)
                try:
                    out['blocks'] = baselines.grow_to_latency(self.teacher, order, target, self.lat_kw)
                except ValueError as e:
                    return {'error': str(e)}
            out['select_s'] = time.perf_counter() - start
            student = self.build(out)
            out['saved_pct'], out['teacher_ms'], out['student_ms'] = self.latency_saved(student)
            out['params'] = latency.count_params(student)
            out['macs'] = latency.count_macs(student, self.input_size)
            return out
        return self.cached(key, compute)

    def remeasure_latency(self, rows, repeats):
        """Time the teacher and every distinct student of the finished rows again, interleaved in one run (meant
        for an idle machine), and store the saving as ``saved_pct_idle`` in each row."""
        groups = {}  # one student per block choice or pruning ratio, shared by the rows that use it
        for r in rows.values():
            if r['status'] == 'done':
                groups.setdefault(json.dumps([r.get('blocks'), r.get('ratio')]), []).append(r)
        students = [self.build({'blocks': g[0]['blocks']} if g[0].get('blocks') else {'ratio': g[0]['ratio']})
                    for g in groups.values()]
        lat = measure_latencies([self.teacher] + students, **{**self.lat_kw, 'repeats': repeats, 'warmup': 2})
        base = lat[0].median_ms
        for group, student_lat in zip(groups.values(), lat[1:]):
            for r in group:
                r['saved_pct_idle'] = 100 * (1 - student_lat.median_ms / base)
        return {'teacher_ms': base, 'repeats': repeats, 'students': len(students),
                'date': datetime.datetime.now().isoformat(timespec='minutes')}

    def build(self, choice):
        if 'ratio' in choice:
            return baselines.filter_prune(self.teacher, choice['ratio'], self.input_size)
        return pdf.drop_blocks(self.teacher, choice['blocks'], candidates=self.candidates)

    def block_latency(self):
        return self.cached('block_latency', lambda: pdf.block_latency_savings(
            self.teacher, self.candidates, self.input_size, **{k: v for k, v in self.lat_kw.items()
                                                               if k != 'input_size'}))

    def scores(self, data, seed):
        def compute():
            tiny, held = self.score_images(data, seed)
            start = time.perf_counter()
            s = score_blocks(self.teacher, tiny, held, latency=self.block_latency(), seed=seed, progress=False,
                             settings=self.score_settings())
            return {'scores': [x.to_dict() for x in s], 'seconds': time.perf_counter() - start}
        got = self.cached(f'scores|{data}|{self.data_seed(seed)}', compute)
        return [BlockScore(**s) for s in got['scores']]

    def score_settings(self):
        from practise_df.scoring import ESTIMATORS, RecoverySettings
        return RecoverySettings(steps=3, batch_size=8) if self.quick else ESTIMATORS['fast']

    def data_seed(self, seed):
        return seed

    # -- one row --------------------------------------------------------------------------------------
    def run_row(self, row):
        choice = self.choice(row['method'], row['data'], row['target'], row['seed'])
        if 'error' in choice:
            return {**row, 'status': f"not run: {choice['error']}"}
        ft_s = 0.0
        steps = row['finetune'].split('+')  # 'adaptors' / 'adaptors+mir': fit and fold adaptors first (compress does)
        if steps[0] == 'adaptors':
            if 'blocks' not in choice:
                return {**row, 'status': 'not run: adaptors need dropped blocks'}
            start = time.perf_counter()
            tiny, _ = self.score_images(row['data'], row['seed'])
            student = pdf.drop_and_recover(self.teacher, choice['blocks'], tiny, settings=self.score_settings(),
                                           seed=row['seed'])
            ft_s += time.perf_counter() - start
            steps = steps[1:]
        else:
            student = self.build(choice)
        if steps and steps[0] != 'none':
            cfg = FinetuneConfig(loss=steps[0], steps=self.ft_iters, batch_size=self.ft_batch,
                                 lr=self.ft_lr, freeze_bn=True, seed=row['seed'])
            start = time.perf_counter()
            finetune(student, self.teacher, self.train_data(row['data'], row['seed']), cfg,
                     accelerator=self.accelerator, progress=False)
            self.accelerator.free_memory()
            ft_s += time.perf_counter() - start
        start = time.perf_counter()
        metrics = self.evaluate(student.eval())
        scoring_s = 0.0
        if row['method'] in SCORED:
            scoring_s = self.cache.get(f"scores|{row['data']}|{self.data_seed(row['seed'])}", {}).get('seconds', 0.0)
        return {**row, 'status': 'done', **metrics, 'blocks': choice.get('blocks'), 'ratio': choice.get('ratio'),
                'saved_pct': choice['saved_pct'], 'params': choice['params'], 'macs': choice['macs'],
                'select_s': choice['select_s'], 'scoring_s': scoring_s, 'finetune_s': ft_s,
                'eval_s': time.perf_counter() - start,
                'compute_s': choice['select_s'] + scoring_s + ft_s}


class TrackA(Track):
    name = 'A'

    def __init__(self, args):
        super().__init__(args)
        self.teacher, self.dc = lite0_teacher()
        self.input_size = tuple(self.dc['input_size'])
        self.candidates = pdf.find_blocks(self.teacher, self.input_size)
        self.lat_kw = {'input_size': self.input_size, 'batch_size': 2 if self.quick else 32, 'warmup': 1,
                       'repeats': 1 if self.quick else 2}
        self.ft_iters, self.ft_batch, self.ft_lr = (2, 4, 0.005) if self.quick else (args.ft_iters or 30, 16, 0.005)
        self.accelerator = make_accelerator(None, FinetuneConfig())
        n_eval = 64 if self.quick else None
        images, labels = load_image_tensor(args.imagenet_sample, self.dc, max_images=n_eval)
        self.evaluate = Evaluator(self.teacher, images, labels)
        self.teacher_metrics = self.evaluate.teacher_metrics

    def block_latency(self):
        # per-block savings at batch 32, 224 px, measured on an idle machine for issue 3
        path = os.path.join(HERE, 'results', 'estimator_latency.json')
        if self.quick or not os.path.isfile(path):
            return super().block_latency()
        return read_results(path)['blocks']

    def data_seed(self, seed):
        return 0  # one synthesized set and one out-of-domain subset

    def _synth_dir(self):
        dst = os.path.join(self.args.cache, 'synth')
        if not os.path.isdir(dst):  # a copy, so a later quickstart run cannot change it under us
            shutil.copytree(self.args.synth_run + '/synth', dst)
            shutil.copy(self.args.synth_run + '/scores.json', os.path.join(self.args.cache, 'synth_scores.json'))
        return dst

    def scores(self, data, seed):
        if data == 'synth' and not self.quick:
            # PRACTISE scores of the quickstart run on these synthesized images (fast estimator, 48 tiny /
            # 16 held-out), score recomputed with the batch-32 latency savings
            self._synth_dir()
            lat = self.block_latency()
            out = []
            for s in read_results(os.path.join(self.args.cache, 'synth_scores.json'))['scores']:
                pct = lat[s['block']]['saved_pct']
                out.append(BlockScore(**{**s, 'saved_ms': lat[s['block']]['saved_ms'], 'saved_pct': pct,
                                         'score': s['recoverability'] / max(pct, 1e-3)}))
            self.cache.setdefault('scores|synth|0', {'scores': [s.to_dict() for s in out],
                                                     'seconds': sum(s.seconds for s in out)})
            return sorted(out, key=lambda s: s.score)
        return super().scores(data, seed)

    def _dataset(self, data, train):
        # Synthesized images as optimised (flips and shifts only); out-of-domain: crops of the natural photos of
        # ../shared/data/ood-photos. Rows cached before 2026-12-01 used the real-image loader (resize and crop)
        # and Fashion-MNIST images instead (BENCHMARKS.md): superseded by bench_datafree.py.
        if data == 'synth':
            return SynthesizedImages(self._synth_dir(), self.dc['input_size'], augment=train)
        return SingleImageCrops([OOD_PHOTOS], self.args.ood_images, self.dc, seed=0, cutmix=0.5)

    def score_images(self, data, seed):
        ds = self._dataset(data, train=False)
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return split_tensor(x, len(x) - max(1, len(x) // 4), seed=0)

    def train_data(self, data, seed):
        return self._dataset(data, train=True)

    def rows(self):
        """Ordered by priority: the rows that answer the main question first (see --deadline)."""
        t_hi, t_lo = self.args.targets[-1], self.args.targets[0]
        rows = []

        def add(method, data, ft, target, seed=0):
            rows.append({'method': method, 'data': data, 'finetune': ft, 'target': target, 'seed': seed})
        for m in ('practise', 'output-diff'):
            add(m, 'synth', 'none', t_hi)
        for m in ('first-k', 'filter-l1'):
            add(m, '-', 'none', t_hi)
        add('random', '-', 'none', t_hi, 0)
        for m in ('practise', 'first-k', 'filter-l1'):
            add(m, 'synth', 'mir', t_hi)
        add('practise', 'synth', 'kd', t_hi)
        add('practise', 'ood', 'none', t_hi)
        add('practise', 'ood', 'mir', t_hi)
        add('random', '-', 'none', t_hi, 1)
        # recovery as compress does it: adaptors fitted on the scoring images and folded, then MiR
        for m in ('practise', 'first-k'):
            add(m, 'synth', 'adaptors', t_hi)
        add('practise', 'synth', 'adaptors+mir', t_hi)
        for m in ('practise', 'output-diff'):
            add(m, 'synth', 'none', t_lo)
        for m in ('first-k', 'filter-l1'):
            add(m, '-', 'none', t_lo)
        add('random', '-', 'none', t_lo, 0)
        add('output-diff', 'synth', 'mir', t_hi)
        add('random', 'synth', 'mir', t_hi)
        add('first-k', 'synth', 'kd', t_hi)
        for m in ('practise', 'first-k'):
            add(m, 'synth', 'mir', t_lo)
        add('first-k', 'ood', 'mir', t_hi)
        add('practise', 'ood', 'kd', t_hi)
        add('filter-l1', 'synth', 'kd', t_hi)
        for m in ('practise', 'first-k'):
            add(m, 'synth', 'adaptors', t_lo)
        add('practise', 'ood', 'adaptors', t_hi)
        return rows


class TrackB(Track):
    name = 'B'

    def __init__(self, args):
        super().__init__(args)
        self.teacher = fmnist_teacher(args.fmnist_teacher)
        self.dc = FMNIST_DATA_CONFIG
        self.input_size = tuple(self.dc['input_size'])
        self.candidates = pdf.find_blocks(self.teacher, self.input_size)
        self.lat_kw = {'input_size': self.input_size, 'batch_size': 256, 'warmup': 2,
                       'repeats': 3 if self.quick else 10}
        self.ft_iters, self.ft_batch, self.ft_lr = (3, 16, 0.01) if self.quick else (args.ft_iters or 100, 64, 0.01)
        self.accelerator = make_accelerator(None, FinetuneConfig())
        self.test_x, self.test_y = load_fmnist('test', args.fmnist_dir)
        if self.quick:
            self.test_x, self.test_y = self.test_x[:500], self.test_y[:500]
        self.evaluate = Evaluator(self.teacher, to_input(self.test_x), self.test_y, batch_size=500)
        self.teacher_metrics = self.evaluate.teacher_metrics

    def _n_images(self):
        return 32 if self.quick else self.args.images

    def _synth_dir(self, seed):
        out = os.path.join(self.args.cache, f'synth_s{seed}')

        def compute():
            return synthesize(self.teacher, out, self._n_images(), data_config=self.dc,
                              batch_size=min(64, self._n_images()), seed=seed,
                              steps=12 if self.quick else self.args.synth_iters, progress=False)
        self.cached(f'synth|{seed}', compute)
        return out

    def _dataset(self, data, seed, transform):
        if data == 'synth':
            return ImageFolderDataset(self._synth_dir(seed), transform)
        gray = T.Compose([T.Grayscale(num_output_channels=3), transform])
        return ImageFolderDataset(self.args.imagenet_sample, gray, max_images=self._n_images(), seed=seed)

    def score_images(self, data, seed):
        ds = self._dataset(data, seed, eval_transform(self.dc))
        x = torch.stack([ds[i][0] for i in range(len(ds))])
        return split_tensor(x, len(x) - max(1, len(x) // 4), seed=seed)

    def train_data(self, data, seed):
        return self._dataset(data, seed, train_transform(self.dc))

    def rows(self):
        """No finetuning first, then the data-free recoveries, MiR on out-of-domain images, KD last; seeds
        innermost."""
        rows = []
        for ft, data in (('none', 'synth'), ('none', 'ood'), ('adaptors', 'synth'), ('mir', 'synth'),
                         ('adaptors+mir', 'synth'), ('mir', 'ood'), ('kd', 'synth'), ('kd', 'ood')):
            for t in self.args.targets[::-1]:
                for m in METHODS:
                    if ft == 'none' and data == 'ood' and m not in SCORED:
                        continue  # choice and model do not depend on the images
                    if ft.startswith('adaptors') and m == 'filter-l1':
                        continue  # no dropped blocks to put adaptors around
                    for seed in self.args.seeds:
                        d = data if (ft != 'none' or m in SCORED) else '-'
                        rows.append({'method': m, 'data': d, 'finetune': ft, 'target': t, 'seed': seed})
        return rows


# -- report -------------------------------------------------------------------------------------------
def row_key(r):
    return f"{r['method']}|{r['data']}|{r['finetune']}|{r['target']}|{r['seed']}"


def _ms(values, fmt='{:.1f}'):
    if not values:
        return '-'
    if len(values) == 1:
        return fmt.format(values[0])
    return (fmt + ' ± ' + fmt).format(statistics.mean(values), statistics.stdev(values))


def write_markdown(results, path, track_name):
    rows = results['rows']
    teacher = results['teacher']
    setup = results['setup']
    lines = [f"# Latency vs accuracy, track {track_name}", '',
             (f"Machine: {setup['machine']}; torch threads {setup['threads']}; date {setup['date']}; "
              f"command `{setup['command']}`."),
             (f"Latency: CPU, batch {setup['latency']['batch_size']}, input {setup['latency']['input_size']}, "
              f"median of {setup['latency']['repeats']} interleaved runs. Finetuning: {setup['finetune']}."),
             *([f"Idle re-run of the latency (`{idle['command']}`, {idle['date']}): the teacher and all "
                f"{idle['students']} distinct students timed interleaved, median of {idle['repeats']} runs each; "
                "compare rows by this column, the saving measured during the run had other jobs beside it."]
               if (idle := results.get('latency_idle')) else []), '',
             (f"Teacher: top-1 {teacher['top1']:.1f}%, top-5 {teacher['top5']:.1f}%, "
              f"params {teacher['params'] / 1e6:.2f}M, MACs {teacher['macs'] / 1e6:.0f}M."), '']
    table = []
    groups = {}
    for r in rows.values():
        groups.setdefault((r['method'], r['data'], r['finetune'], r['target']), []).append(r)
    not_run = []
    for (m, d, ft, t), rs in groups.items():
        done = [r for r in rs if r['status'] == 'done']
        if not done:
            not_run.append(f"- {m}, {d}, {ft}, {100 * t:.0f}%: {rs[0]['status']}")
            continue
        if m == 'random':
            choice = '; '.join(','.join(r['blocks']) for r in done)
        else:
            choice = ','.join(done[0]['blocks']) if done[0].get('blocks') else f"ratio {done[0]['ratio']:.3f}"
        table.append([m, d, ft, f'{100 * t:.0f}%', len(done), _ms([r['saved_pct'] for r in done]),
                      _ms([r['saved_pct_idle'] for r in done if 'saved_pct_idle' in r]),
                      f"{statistics.mean(r['params'] for r in done) / 1e6:.2f}",
                      f"{statistics.mean(r['macs'] for r in done) / 1e6:.0f}", _ms([r['top1'] for r in done]),
                      _ms([r['top5'] for r in done]), _ms([r['agreement'] for r in done]), choice,
                      f"{statistics.mean(r['compute_s'] for r in done):.0f}"])
    lines += markdown_table(['method', 'data', 'finetune', 'target', 'seeds', 'latency saved %', 'saved %, idle re-run',
                             'params M', 'MACs M', 'top-1', 'top-5', 'agreement', 'blocks / ratio', 'compute s'],
                            table, 'lllrrrrrrrrrlr')
    if not_run:
        lines += ['', 'Not run:', *not_run]
    lines += ['', *results.get('notes', [])]
    write_text(path, '\n'.join(lines) + '\n')


COLORS = {'practise': 'tab:red', 'first-k': 'tab:blue', 'random': 'tab:gray', 'output-diff': 'tab:green',
          'filter-l1': 'tab:purple'}
MARKERS = {'none': 'o', 'adaptors': 'D', 'mir': 's', 'adaptors+mir': 'P', 'kd': '^'}


def plot(results, track, latency_png, recover_png):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    groups = {}
    for r in results['rows'].values():
        if r['status'] == 'done':
            groups.setdefault((r['method'], r['data'], r['finetune'], r['target']), []).append(r)
    if not groups:
        return
    from matplotlib.lines import Line2D
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (m, d, ft, _), rs in sorted(groups.items()):
        x = [r.get('saved_pct_idle', r['saved_pct']) for r in rs]  # the idle re-run where there is one
        y = [r['top1'] for r in rs]
        ax.errorbar(statistics.mean(x), statistics.mean(y), yerr=statistics.stdev(y) if len(y) > 1 else None,
                    xerr=statistics.stdev(x) if len(x) > 1 else None, color=COLORS[m], marker=MARKERS[ft],
                    mfc='none' if d == 'ood' else COLORS[m], linestyle='none', capsize=2, alpha=0.85)
    ax.axhline(results['teacher']['top1'], color='k', lw=0.8, ls='--')
    handles = [Line2D([], [], color=c, marker='o', ls='none', label=m) for m, c in COLORS.items()]
    handles += [Line2D([], [], color='k', marker=mk, ls='none', label=f'finetune: {ft}') for ft, mk in MARKERS.items()]
    handles += [Line2D([], [], color='k', marker='o', mfc='none', ls='none', label='out-of-domain images'),
                Line2D([], [], color='k', ls='--', lw=0.8, label='teacher')]
    ax.legend(handles=handles, fontsize=7, loc='center left', bbox_to_anchor=(1.01, 0.5))
    ax.set_xlabel('latency saved on this CPU (%)' + (', idle re-run' if 'latency_idle' in results else ''))
    ax.set_ylabel('top-1 (%)')
    n_seeds = max(len(rs) for rs in groups.values())
    ax.set_title(f"Track {track.name}: top-1 vs measured latency saved"
                 + (f' (mean ± sd over up to {n_seeds} seeds)' if n_seeds > 1 else ''), fontsize=10)
    fig.tight_layout()
    fig.savefig(latency_png, dpi=120)
    plt.close(fig)

    key = 'scores|synth|0'
    if key not in results.get('scores', {}):
        return
    scores = sorted(results['scores'][key]['scores'], key=lambda s: track.candidates.index(s['block']))
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(scores))
    ax.bar([x - 0.2 for x in xs], [s['recoverability'] for s in scores], 0.4, label='recoverability (adaptors fitted)')
    ax.bar([x + 0.2 for x in xs], [s['mse_dropped'] for s in scores], 0.4, label='feature MSE, dropped only')
    for x, s in zip(xs, scores):
        ax.annotate(f"{s['saved_pct']:.1f}%\n{s['score']:.3g}", (x, max(s['recoverability'], s['mse_dropped'])),
                    ha='center', va='bottom', fontsize=6)
    ax.set_xticks(list(xs), [s['block'] for s in scores], rotation=30, fontsize=7)
    ax.set_ylabel('held-out feature MSE (synthesized images)')
    ax.set_title(f'Track {track.name}: per-block recoverability (labels: latency saved, PRACTISE score)')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(recover_png, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--track', choices=('A', 'B'), required=True)
    p.add_argument('--quick', action='store_true', help='tiny sizes for a smoke run (results and plots under '
                   'runs/)')
    p.add_argument('--out', default=None, help='default: benchmarks/results/latency_accuracy_{A,B}.json')
    p.add_argument('--cache', default=None, help='default: runs/bench_latency_accuracy_{A,B}')
    p.add_argument('--docs', default=None, help='where the plots go (default: docs/, --quick: the cache folder)')
    p.add_argument('--targets', default='0.15,0.25', help='latency saving targets (fractions)')
    p.add_argument('--seeds', default=None, help='Track B seeds (default 0,1,2)')
    p.add_argument('--images', type=int, default=256, help='Track B: synthesized / out-of-domain images per seed')
    p.add_argument('--synth-iters', type=int, default=200, help='Track B: inversion steps per batch (fast preset)')
    p.add_argument('--ood-images', type=int, default=64, help='Track A: crops of the natural photos')
    p.add_argument('--ft-iters', type=int, default=None, help='finetuning iterations (A: 30 at batch 16, B: 100 at 64)')
    p.add_argument('--imagenet-sample', default=IMAGENET_SAMPLE)
    p.add_argument('--fmnist-dir', default=FMNIST_DIR)
    p.add_argument('--fmnist-teacher', default=FMNIST_TEACHER)
    p.add_argument('--synth-run', default='runs/quickstart_idle', help='Track A: a finished compress run whose '
                   'synth/ and scores.json are reused')
    p.add_argument('--deadline', default=None, help='HH:MM (local time): start no row after it')
    p.add_argument('--report-only', action='store_true', help='rewrite the table and plots from --out')
    p.add_argument('--remeasure-latency', type=int, default=0, metavar='REPEATS',
                   help='time every finished row\'s student again, interleaved, REPEATS runs each (on an idle '
                        'machine), and report that saving beside the one measured during the run')
    add_threads_argument(p)
    args = parse_args(p)
    suffix = args.track + ('_quick' if args.quick else '')
    args.cache = args.cache or os.path.join('runs', f'bench_latency_accuracy_{suffix}')
    # smoke runs never write into benchmarks/results or docs
    args.out = args.out or os.path.join(args.cache if args.quick else os.path.join(HERE, 'results'),
                                        f'latency_accuracy_{suffix}.json')
    args.docs = args.docs or (args.cache if args.quick else os.path.join(HERE, '..', 'docs'))
    args.targets = [float(t) for t in args.targets.split(',')]
    args.seeds = [int(s) for s in (args.seeds or ('0' if args.quick else '0,1,2')).split(',')]
    os.makedirs(args.cache, exist_ok=True)
    torch.manual_seed(0)

    results = read_results(args.out, {'rows': {}})
    track = (TrackA if args.track == 'A' else TrackB)(args)
    if 'teacher' not in results:
        results['teacher'] = {**track.teacher_metrics, 'params': latency.count_params(track.teacher),
                              'macs': latency.count_macs(track.teacher, track.input_size)}
    setup = {'machine': f'{platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), '
             f'torch {torch.__version__}', 'threads': args.threads,
             'date': datetime.date.today().isoformat(), 'command': ' '.join(['python'] + sys.argv),
             'latency': {k: (list(v) if isinstance(v, tuple) else v) for k, v in track.lat_kw.items()},
             'finetune': f'{track.ft_iters} iterations, batch {track.ft_batch}, SGD lr {track.ft_lr}, '
                         'StepLR x0.1 at 40%, BatchNorm statistics frozen',
             'candidates': track.candidates}
    if not (args.report_only or args.remeasure_latency) or 'setup' not in results:  # the run's setup stays
        results['setup'] = setup
    deadline = None
    if args.deadline:
        h, m = map(int, args.deadline.split(':'))
        deadline = datetime.datetime.now().replace(hour=h, minute=m, second=0)
    for row in ([] if args.report_only else track.rows()):
        key = row_key(row)
        if results['rows'].get(key, {}).get('status') == 'done':
            continue
        if deadline and datetime.datetime.now() > deadline:
            results['rows'][key] = {**row, 'status': f'not run: time budget (deadline {args.deadline})'}
            continue
        start = time.perf_counter()
        print(f'[{datetime.datetime.now():%H:%M:%S}] {key}', flush=True)
        try:
            results['rows'][key] = track.run_row(row)
        except FloatingPointError as e:  # a diverged finetuning is a result, not a reason to stop the matrix
            results['rows'][key] = {**row, 'status': f'failed: {e}'}
        r = results['rows'][key]
        print(f"    {r['status']} top1 {r.get('top1', float('nan')):.2f} saved {r.get('saved_pct', float('nan')):.1f}% "
              f"blocks {r.get('blocks')} ratio {r.get('ratio')} ({time.perf_counter() - start:.0f}s)", flush=True)
        results['scores'] = {k: v for k, v in track.cache.items() if k.startswith('scores|')}
        write_results(args.out, results, indent=1)
    if args.remeasure_latency:
        results['latency_idle'] = {**track.remeasure_latency(results['rows'], args.remeasure_latency),
                                   'command': ' '.join(['python'] + sys.argv)}
    results['scores'] = {k: v for k, v in track.cache.items() if k.startswith('scores|')}
    results['choices'] = {k: v for k, v in track.cache.items() if k.startswith('choice|')}
    if args.track == 'A' and not args.quick:
        results['notes'] = [
            ('PRACTISE and output-difference scores on synthesized images are those of the quickstart run '
             f'({args.synth_run}/scores.json: fast estimator, 48 tiny / 16 held-out synthesized images); the '
             'score is recomputed with per-block latency savings at batch 32 from benchmarks/results/'
             'estimator_latency.json (measured for issue 3). Out-of-domain scores: fast estimator on '
             f'{args.ood_images} crops of natural photos (Fashion-MNIST images in rows cached before 2026-12-01).'),
            ('Blocks are added in each method\'s order until the re-measured latency of the whole student '
             'reaches the target (2 interleaved runs at batch 32 per step): noisy on a shared machine, so the '
             'final saving is measured again and reported as is.')]
    write_results(args.out, results, indent=1)
    write_markdown(results, args.out[:-5] + '.md', args.track)
    os.makedirs(args.docs, exist_ok=True)
    q = '_quick' if args.quick else ''
    plot(results, track, os.path.join(args.docs, f'latency_accuracy_{args.track}{q}.png'),
         os.path.join(args.docs, f'recoverability_{args.track}{q}.png'))
    with open(args.out[:-5] + '.md') as f:
        print(f.read())


if __name__ == '__main__':
    main()
