"""Track A again: does data-free recovery beat plainly dropping the blocks of an ImageNet teacher?

    python benchmarks/bench_datafree.py --point 25 --rows drop,mir_real,mir_photos [--seeds 0,1] [--threads 1]
    python benchmarks/bench_datafree.py --report          # tables of every finished row (markdown)
    python benchmarks/bench_datafree.py --paired --also ...  # each student against dropped, image by image

Teacher: tf_efficientnet_lite0 with its ImageNet weights (87.3% on all 1000 imagenet-sample images).
``../shared/data/imagenet-sample`` is split by seed 0 into 500 **test** images, used for nothing but the
reported top-1, and 500 **dev** images: the real-data rows train on them, and data-free settings are
chosen on their top-1 (``dev_top1``), never on the test images. Each latency point pins one block set,
so every row at a point drops the same blocks and shares one dropped-only baseline:

- ``25``: blocks.1.1, blocks.3.2, blocks.3.1, blocks.2.1, blocks.4.2 (PRACTISE's choice at Track A's 25%
  target; 25.5% saved in the idle re-measurement of BENCHMARKS.md, batch 32);
- ``15``: blocks.4.2, blocks.1.1 (the quickstart's choice; 13.4% and 15.2% saved in two idle runs, batch 8).

Every finetuning row starts from the plainly dropped student and runs the same number of iterations at
the same batch size (``--iterations``, ``--batch-size``) through ``practise_df.finetune``; only the images,
the loss and the settings named in the row differ. Image sources:

- ``synth:NAME``: a folder under ``runs/pools`` made by ``practise-df synth`` at 224 px, used as optimised
  (``synth.SynthesizedImages``: flips and shifts only);
- ``photos``: random crops of 10 of the 13 photos of ``../shared/data/ood-photos`` (random resized crops,
  flips, colour jitter, grayscale, CutMix), a fresh crop for every image the loop draws;
- ``real``: the 500 dev images with random resized crops and flips (the official few-shot setting).

Label-free signals for the guard are recorded for every student: top-1 agreement with the teacher, mean
KL divergence and feature MSE on 256 crops of the 3 held-out photos (``GUARD_PHOTOS``, never trained on).
``--report`` prints the tables.
Rows are cached in ``--out`` and skipped on a re-run; a row killed midway resumes from its last
checkpoint under ``runs/bench_datafree``.
"""
import argparse
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import ConcatDataset, Subset

from common import (IMAGENET_SAMPLE, OOD_PHOTOS, ROOT, add_threads_argument, lite0_teacher, markdown_table,
                    parse_args, read_results, write_results)
from practise_df.models import efficientnet_lite0_weights
from practise_df import CompressConfig, compress, drop_blocks, evaluate, load_compressed, save_compressed
from practise_df.finetune import DEFAULT_LR, FinetuneConfig, finetune
from practise_df.guard import SIGNALS, closeness, compare
from practise_df.pipeline import REJECTED_DIR
from practise_df.recovery import MIN_Z, choose
from synth import SingleImageCrops, SynthesizedImages
from synth.data import ImageFolderDataset, eval_transform, train_transform
from synth.ood import photo_crops

HERE = os.path.dirname(os.path.abspath(__file__))
GUARD_PHOTOS = ('Dune.jpg', 'LadyBird.jpg', 'Storm.jpg')  # held out whole: the guard's images, never trained on
POOLS = os.path.join(ROOT, 'runs', 'pools')
SEPARATED = 1.0  # test top-1 points: about one paired standard error on the 500 test images (the estimate)
POINTS = {
    '25': ['blocks.1.1', 'blocks.3.2', 'blocks.3.1', 'blocks.2.1', 'blocks.4.2'],
    '15': ['blocks.4.2', 'blocks.1.1'],
}


@dataclass(frozen=True)
class Row:
    data: Optional[str]  # '+'-joined sources (see the module docstring); None = dropped only
    loss: str = 'mir'
    lr: Optional[float] = None  # default: practise_df.finetune.DEFAULT_LR
    freeze_bn: bool = True
    cutmix: float = 0.5  # photos only
    photo_scale: tuple = (0.08, 1.0)  # photos only: random resized crop area range
    extra: dict = field(default_factory=dict)  # other FinetuneConfig fields
    # a row whose training this one repeats exactly (it differs only after training, e.g. in ``mix``): its
    # checkpoints are copied in, when it has run, and resumed with no training
    same_training_as: Optional[str] = None


ROWS: Dict[str, Row] = {
    'drop': Row(None),
    'mir_real': Row('real', lr=0.02, freeze_bn=False),  # the ceiling: official few-shot PRACTISE on the dev images
    'mir_real_frozenbn': Row('real'),
    'mir_synth': Row('synth:fast224_s{seed}'),
    'mir_natural': Row('synth:natural224_s{seed}'),
    'kd_natural': Row('synth:natural224_s{seed}', loss='kd'),
    'mirkd_natural': Row('synth:natural224_s{seed}', loss='mir+kd'),
    'mir_natural_photos': Row('synth:natural224_s{seed}+photos'),
    # 1024 images x 1000 steps synthesized on a GPU in bf16 (benchmarks/gpu_check.sh, CHECKS=datafree)
    'mir_gpu1024': Row('synth:gpu1024_s{seed}'),
    'kd_gpu1024': Row('synth:gpu1024_s{seed}', loss='kd'),
    # compress itself with its defaults (guard on), blocks pinned: what a user gets
    'default_natural': Row('compress:natural224_s{seed}'),
    'default_fast': Row('compress:fast224_s{seed}'),
    'default_photos': Row('compress:photos'),
    'mir_photos': Row('photos'),
    'mir_photos_lr005': Row('photos', lr=0.005),
    'mir_photos_lr05': Row('photos', lr=0.05),
    'mir_photos_nocutmix': Row('photos', cutmix=0.0),
    'kd_photos': Row('photos', loss='kd'),
    'mirkd_photos': Row('photos', loss='mir+kd'),
    'mir_mix': Row('synth:fast224_s{seed}+photos'),
    'kd_synth': Row('synth:fast224_s{seed}', loss='kd'),
    'mirkd_synth': Row('synth:fast224_s{seed}', loss='mir+kd'),
    # WiSE-FT: a quarter of the finetuning update kept (finetune's ``mix``)
    'mirkd_photos_mix25': Row('photos', loss='mir+kd', extra={'mix': 0.25}, same_training_as='mirkd_photos'),
    'kd_photos_mix25': Row('photos', loss='kd', extra={'mix': 0.25}, same_training_as='kd_photos'),
    'mir_natural_photos_mix25': Row('synth:natural224_s{seed}+photos', extra={'mix': 0.25},
                                    same_training_as='mir_natural_photos'),
    'mirkd_photos_mix10': Row('photos', loss='mir+kd', extra={'mix': 0.1}, same_training_as='mirkd_photos'),
    'mir_real_mix10': Row('real', lr=0.02, freeze_bn=False, extra={'mix': 0.1}, same_training_as='mir_real'),
    'mir_real_frozenbn_mix10': Row('real', extra={'mix': 0.1}, same_training_as='mir_real_frozenbn'),
    'mir_synth_mix10': Row('synth:fast224_s{seed}', extra={'mix': 0.1}, same_training_as='mir_synth'),
    'mir_natural_mix10': Row('synth:natural224_s{seed}', extra={'mix': 0.1}, same_training_as='mir_natural'),
    # compress's defaults (guard on) since it keeps only a fraction of the update (finetune.DATAFREE_MIX, recorded
    # as ``mix``), resumed from the training of the default rows before it (their run.json leaves mix unset)
    'default_photos_wise': Row('compress:photos', same_training_as='default_photos'),
    'default_natural_wise': Row('compress:natural224_s{seed}', same_training_as='default_natural'),
}


def compress_row(row: Row, blocks, seed: int, args, run_dir: str):
    """``practise_df.compress`` with its default recovery (MiR, BatchNorm frozen, guard on; ``row.extra`` sets other
    finetuning settings), the blocks pinned, the iterations and batch size of every finetuning row, on a pool:
    (the student it keeps, its report)."""
    source = row.data[len('compress:'):].format(seed=seed)
    if source == 'photos':
        source = 'crops:' + ','.join(training_photos())
    else:
        source = os.path.join(POOLS, source)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    config = CompressConfig(
        model='timm:tf_efficientnet_lite0', weights=efficientnet_lite0_weights(), output_dir=run_dir, seed=seed,
        images={'source': source, 'num_images': args.iterations * args.batch_size if 'crops:' in source else 64,
                'heldout': 1},
        scoring={'blocks': blocks}, latency={'batch_size': 8, 'repeats': 3},
        finetune={'steps': args.iterations, 'batch_size': args.batch_size, 'checkpoint_every': 50, **row.extra})
    report = compress(config, resume=os.path.isdir(run_dir), progress=False)
    return load_compressed(os.path.join(run_dir, 'model')), report


def training_photos():
    return [os.path.join(OOD_PHOTOS, f) for f in sorted(os.listdir(OOD_PHOTOS))
            if f.endswith('.jpg') and f not in GUARD_PHOTOS]


def split_sample(n: int, seed: int = 0):
    """(test indices, dev indices) of the imagenet-sample images: 500 / the rest, by seed."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[:500]), sorted(perm[500:])


def training_data(row: Row, cfg: dict, seed: int, images_needed: int, dev_idx):
    parts = []
    for source in row.data.split('+'):
        if source.startswith('synth:'):
            folder = os.path.join(POOLS, source[len('synth:'):].format(seed=seed))
            if not os.path.isdir(folder):
                raise SystemExit(f'{folder} does not exist: synthesize it first (see BENCHMARKS.md for the command)')
            parts.append(SynthesizedImages(folder, cfg['input_size'], cfg['mean'], cfg['std'], augment=True))
        elif source == 'photos':
            parts.append(SingleImageCrops(training_photos(), images_needed, cfg, seed=seed, scale=row.photo_scale,
                                          cutmix=row.cutmix))
        elif source == 'real':
            parts.append(Subset(ImageFolderDataset(IMAGENET_SAMPLE, train_transform(cfg, scale=(0.08, 1.0))), dev_idx))
        else:
            raise SystemExit(f'unknown image source {source!r}')
    return parts[0] if len(parts) == 1 else ConcatDataset(parts)


def run_folder(key: str, iterations: int, batch_size: int) -> str:
    return os.path.join(ROOT, 'runs', 'bench_datafree', f"{key.replace('|', '_')}_it{iterations}_b{batch_size}")


def stack(dataset, indices):
    return torch.stack([dataset[i][0] for i in indices]), torch.tensor([dataset.samples[i][1] for i in indices])


def test_images(cfg):
    """The 500 test images as one tensor, and their labels."""
    sample = ImageFolderDataset(IMAGENET_SAMPLE, eval_transform(cfg))
    return stack(sample, split_sample(len(sample))[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--point', choices=sorted(POINTS), default='25')
    parser.add_argument('--rows', default='drop', help=f'comma list of: {", ".join(ROWS)}')
    parser.add_argument('--seeds', default='0')
    parser.add_argument('--iterations', type=int, default=200)
    parser.add_argument('--batch-size', type=int, default=32)
    add_threads_argument(parser)
    parser.add_argument('--out', default=os.path.join(HERE, 'results', 'datafree.json'))
    parser.add_argument('--report', action='store_true', help='print the tables of the finished rows and exit')
    parser.add_argument('--guard', action='store_true',
                        help='measure the label-free guard signals of every saved student against the dropped one '
                             '(results in --guard-out) and how often each picks the higher test top-1')
    parser.add_argument('--guard-out', default=os.path.join(HERE, 'results', 'guard.json'))
    parser.add_argument('--paired', action='store_true',
                        help="compare every saved student with its point's dropped one image by image on the test "
                             'images: the images only one of them gets right, the paired standard error of the '
                             'difference and an exact sign test (results in --paired-out)')
    parser.add_argument('--paired-out', default=os.path.join(HERE, 'results', 'paired.json'))
    parser.add_argument('--also', default='', help='more results files whose rows join the report / guard analysis')
    args = parse_args(parser)
    results = read_results(args.out, {'rows': {}})
    merged = {k: v for path in [args.out] + [p for p in args.also.split(',') if p] if os.path.isfile(path)
              for k, v in read_results(path)['rows'].items()}
    if args.report:
        print(report({'rows': merged}))
        return
    if args.guard:
        guard_analysis(merged, args.guard_out)
        return
    if args.paired:
        paired_analysis(merged, args.paired_out)
        return
    names = [r for r in args.rows.split(',') if r]
    unknown = [r for r in names if r not in ROWS]
    if unknown:
        parser.error(f'unknown rows {unknown}; choose from {", ".join(ROWS)}')

    teacher, cfg = lite0_teacher()
    sample = ImageFolderDataset(IMAGENET_SAMPLE, eval_transform(cfg))
    test_idx, dev_idx = split_sample(len(sample))
    test, test_labels = stack(sample, test_idx)
    dev, dev_labels = stack(sample, dev_idx)
    guard = photo_crops(cfg, GUARD_SETS['heldout_photos'], seed=12345)
    blocks = POINTS[args.point]

    def save(key, row):
        results['rows'][key] = row
        print(f'{key}: {json.dumps(row)}', flush=True)
        results.update(teacher_test_top1=top1(teacher), test_images=len(test_idx), dev_images=len(dev_idx),
                       guard_photos=list(GUARD_PHOTOS))
        write_results(args.out, results)

    def top1(model, images=test, labels=test_labels):
        return round(evaluate(model, list(zip(images.split(100), labels.split(100))), progress=False)['top1'], 2)

    for seed in [int(s) for s in args.seeds.split(',')]:
        for name in names:
            row = ROWS[name]
            key = f'{args.point}|{name}|seed{seed}'
            if key in results['rows'] or (row.data is None and seed != 0):
                continue
            start = time.time()
            student = drop_blocks(teacher, blocks)
            info = {'blocks': blocks, 'data': row.data, 'seed': seed}
            # the folder names the iteration count and batch size, so a row never resumes another's checkpoint
            run_dir = run_folder(key, args.iterations, args.batch_size)
            source = row.same_training_as and run_folder(f'{args.point}|{row.same_training_as}|seed{seed}',
                                                         args.iterations, args.batch_size)
            if source and os.path.isdir(source) and not os.path.isdir(run_dir):  # its training, not its outputs
                shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns('student', 'model', REJECTED_DIR,
                                                                               'report.json'))
                info['training_copied_from'] = row.same_training_as
            if row.data is not None and row.data.startswith('compress:'):
                student, run_report = compress_row(row, blocks, seed, args, run_dir)
                info.update(loss='mir (default)', lr=DEFAULT_LR['mir'], freeze_bn=True, iterations=args.iterations,
                            batch_size=args.batch_size, threads=args.threads, kept=run_report["guard"]["kept"],
                            compress_guard=run_report["guard"], final_loss=run_report["finetune"]["final_loss"],
                            mix=run_report['finetune']['mix'])
            elif row.data is not None:
                config = FinetuneConfig(loss=row.loss, steps=args.iterations, batch_size=args.batch_size,
                                        lr=row.lr, freeze_bn=row.freeze_bn, seed=seed, checkpoint_every=50,
                                        **row.extra)
                data = training_data(row, cfg, seed, args.iterations * args.batch_size, dev_idx)
                AcceleratorState._reset_state(True)
                GradientState._reset_state()
                history = finetune(student, teacher, data, config, output_dir=run_dir, resume=True, progress=False)
                save_compressed(student, os.path.join(run_dir, 'student'), data_config=cfg, overwrite=True)
                losses = history['loss']
                info.update(loss=row.loss, lr=config.learning_rate, freeze_bn=row.freeze_bn, images=len(data),
                            iterations=args.iterations, batch_size=args.batch_size, threads=args.threads,
                            first_loss=losses[0] if losses else None, final_loss=losses[-1] if losses else None,
                            cutmix=row.cutmix if 'photos' in row.data else None, **row.extra)
            info.update(top1=top1(student), dev_top1=top1(student, dev, dev_labels),
                        guard=compare(student, teacher, guard), seconds=round(time.time() - start),
                        date=time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()))
            save(key, info)


GUARD_SETS = {  # name: photos the guard crops (none of them is trained on by any row)
    'sample_photos': None,  # scikit-image's natural photos: compress's default guard images
    'heldout_photos': [os.path.join(OOD_PHOTOS, f) for f in GUARD_PHOTOS],
}


def guard_analysis(rows: dict, out: str) -> None:
    """Every saved student and its point's dropped-only student compared with the teacher, crop by crop, on
    each guard set; a decision is right when the rule ranks the pair as the test top-1 does. Rules: each
    set and signal by its mean (the first guard), the same with compress's paired test
    (``practise_df.recovery.choose``), and all signals on all sets at once (the most conservative)."""
    teacher, cfg = lite0_teacher()
    images = {name: photo_crops(cfg, source, seed=12345) for name, source in GUARD_SETS.items()}
    cached = read_results(out)
    signals, top1s = cached.get('per_crop', {}), cached.get('finetuned_top1', {})

    def save(**more):
        write_results(out, {'per_crop': signals, 'finetuned_top1': top1s, **more})

    def measure(key, model):
        if key not in signals:
            signals[key] = {name: {k: [round(v, 6) for v in t.tolist()]
                                   for k, t in closeness(model, teacher, x).items()} for name, x in images.items()}
            save()
            print(key, {name: {k: round(sum(v) / len(v), 4) for k, v in m.items()} for name, m in signals[key].items()},
                  flush=True)

    test = None
    for point, blocks in POINTS.items():
        measure(f'{point}|drop', drop_blocks(teacher, blocks))
    for key, row in sorted(rows.items()):
        run_dir = run_folder(key, row.get('iterations'), row.get('batch_size'))
        if row['data'] is None:
            continue
        if not row['data'].startswith('compress:'):
            if os.path.isdir(os.path.join(run_dir, 'student')):
                measure(key, load_compressed(os.path.join(run_dir, 'student')))
            continue
        # a compress row: its finetuned student (the one kept, or the one its guard rejected) and that
        # student's test top-1, which the row itself does not record when the guard rejected it
        folder = os.path.join(run_dir, REJECTED_DIR if row.get('kept') == 'dropped' else 'model')
        if key not in signals and os.path.isdir(folder):
            if test is None:
                test, test_labels = test_images(cfg)
            model = load_compressed(folder)
            top1 = evaluate(model, list(zip(test.split(100), test_labels.split(100))), progress=False)['top1']
            top1s[key] = round(top1, 2)
            measure(key, model)
    decisions = {}
    for key, row in sorted(rows.items()):
        point = key.split('|')[0]
        drop_key = f'{point}|drop|seed0'
        if key not in signals or row['data'] is None or drop_key not in rows:
            continue
        finetuned_top1 = top1s.get(key, row['top1'])
        truth = finetuned_top1 > rows[drop_key]['top1']
        verdicts = {}
        for name in images:
            dropped = {k: torch.tensor(v) for k, v in signals[f'{point}|drop'][name].items()}
            ours = {k: torch.tensor(v) for k, v in signals[key][name].items()}
            for signal, sign in SIGNALS.items():
                verdicts[f'{name}/{signal}'] = sign * (ours[signal].mean() - dropped[signal].mean()).item() > 0
                kept = choose({'dropped': dropped, 'finetuned': ours}, signal)[0]
                verdicts[f'{name}/{signal}, paired z>{MIN_Z:g}'] = kept == 'finetuned'
        verdicts['every set and signal'] = all(v for k, v in verdicts.items() if 'paired' not in k)
        for rule, says in verdicts.items():
            decisions.setdefault(rule, []).append({'row': key, 'finetuned_top1': finetuned_top1,
                                                   'dropped_top1': rows[drop_key]['top1'], 'kept_finetuned': says,
                                                   'right': says == truth})
    # wrong decisions include keeping a finetuned student that only ties; what a wrong decision costs is the
    # test top-1 between the two students. Two readings that spare the noise: ties counted right either way,
    # and only the pairs more than one paired standard error apart (SEPARATED points on the 500 test images)
    def apart(d):
        return abs(d['finetuned_top1'] - d['dropped_top1']) > SEPARATED

    summary = {k: {'right': sum(d['right'] for d in v), 'pairs': len(v),
                   'right_ties_either_way': sum(d['right'] or d['finetuned_top1'] == d['dropped_top1'] for d in v),
                   'right_where_apart': sum(d['right'] for d in v if apart(d)),
                   'pairs_apart': sum(apart(d) for d in v),
                   'kept_a_worse_student': sum(d['kept_finetuned'] and not d['right'] for d in v),
                   'kept_a_strictly_worse_student': sum(d['kept_finetuned'] and d['finetuned_top1'] < d['dropped_top1']
                                                        for d in v),
                   'largest_loss': round(max([abs(d['finetuned_top1'] - d['dropped_top1']) for d in v
                                              if not d['right']], default=0.0), 2)}
               for k, v in decisions.items()}
    save(decisions=decisions, summary=summary)
    for k, v in summary.items():
        print(f"{k}: right on {v['right']} of {v['pairs']} pairs ({v['right_ties_either_way']} with ties right either "
              f"way; {v['right_where_apart']} of the {v['pairs_apart']} more than {SEPARATED:g} point apart); kept a "
              f"student not better "
              f"{v['kept_a_worse_student']} times, strictly worse {v['kept_a_strictly_worse_student']}; largest loss "
              f"{v['largest_loss']} points")


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact p-value of ``wins`` against ``losses`` under a fair coin (McNemar's exact test)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def paired_analysis(rows: dict, out: str) -> None:
    """Every saved student against its point's dropped-only student on the same test images, image by image.

    Top-1 differences of a few tenths are only two or three images; whether such a difference is more than
    chance depends on how many images the two students disagree on, which the top-1 alone does not say. For
    each row: ``wins`` (images only the student gets right), ``losses`` (only the dropped one), the difference,
    its paired standard error ``sqrt(w + l - (w - l)^2 / n) / n`` and the exact sign test on ``wins`` vs
    ``losses``. The student measured is the one the row handed back (``student/``, or ``model/`` for the
    compress rows); per-image results are cached in ``out``."""
    teacher, cfg = lite0_teacher()
    cached = read_results(out)
    correct = cached.get('correct', {})  # key: '0'/'1' per test image
    test = None

    def measure(key, model):
        nonlocal test
        if key in correct:
            return
        if test is None:
            test = test_images(cfg)
        model.eval()
        with torch.no_grad():
            right = torch.cat([model(x).argmax(1).eq(y) for x, y in zip(test[0].split(100), test[1].split(100))])
        correct[key] = ''.join('1' if r else '0' for r in right.tolist())
        write_results(out, {**cached, 'correct': correct})
        print(key, f'{100 * right.float().mean().item():.1f}', flush=True)

    for point, blocks in POINTS.items():
        measure(f'{point}|drop|seed0', drop_blocks(teacher, blocks))
    for key, row in sorted(rows.items()):
        if row['data'] is None:
            continue
        folder = os.path.join(run_folder(key, row.get('iterations'), row.get('batch_size')),
                              'model' if row['data'].startswith('compress:') else 'student')
        if os.path.isdir(folder):
            measure(key, load_compressed(folder))
    pairs = {}
    for key, row in sorted(rows.items()):
        drop_key = f"{key.split('|')[0]}|drop|seed0"
        if key not in correct or row['data'] is None or drop_key not in correct:
            continue
        ours, dropped = correct[key], correct[drop_key]
        n = len(ours)
        wins = sum(a == '1' and b == '0' for a, b in zip(ours, dropped))
        losses = sum(a == '0' and b == '1' for a, b in zip(ours, dropped))
        top1 = round(100 * ours.count('1') / n, 2)
        if abs(top1 - row['top1']) > 0.01:  # the student on disk is not the one the row measured
            raise SystemExit(f'{key}: {top1} on the test images now, {row["top1"]} in its results file')
        pairs[key] = {'top1': top1, 'dropped_top1': round(100 * dropped.count('1') / n, 2), 'wins': wins,
                      'losses': losses, 'difference': round(100 * (wins - losses) / n, 2),
                      'paired_se': round(100 * math.sqrt(wins + losses - (wins - losses) ** 2 / n) / n, 2),
                      'sign_test_p': round(sign_test(wins, losses), 4)}
    write_results(out, {'correct': correct, 'pairs': pairs})
    header = ['row', 'test top-1', 'dropped', 'only the student right', 'only the dropped right', 'difference',
              'paired SE', 'sign test p']
    print('\n'.join(markdown_table(header, [
        [key.replace('|', ' '), f"{v['top1']:.1f}", f"{v['dropped_top1']:.1f}", v['wins'], v['losses'],
         f"{v['difference']:+.1f}", f"{v['paired_se']:.2f}", f"{v['sign_test_p']:.3f}"] for key, v in pairs.items()])))


def report(results: dict) -> str:
    table = []
    for key, r in sorted(results['rows'].items()):
        point, name, seed = key.split('|')
        table.append([point, name, r['data'] or '-', r.get('loss', '-'), r.get('lr', '-'),
                      '-' if r['data'] is None else ('frozen' if r['freeze_bn'] else 'train'), seed[4:],
                      f"{r['top1']:.1f}", f"{r.get('dev_top1', float('nan')):.1f}", f"{r['guard']['agreement']:.1f}",
                      f"{r['guard']['kl']:.4f}", r.get('kept', '-')])
    header = ['point', 'row', 'data', 'loss', 'lr', 'BN', 'seed', 'test top-1', 'dev top-1', 'guard agreement',
              'guard KL', 'kept']
    return '\n'.join(markdown_table(header, table, 'llllrlrrrrrl'))


if __name__ == '__main__':
    main()
