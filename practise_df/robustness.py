"""Accuracy under the 15 ImageNet-C corruptions, with the teacher as the baseline model.

:func:`evaluate_robustness` corrupts each batch on the device (:mod:`practise_df.corruptions`) at
every chosen corruption and severity and evaluates the model (and the teacher) on it: top-1 per
corruption and severity, mean corruption accuracy, corruption errors (CE) and mCE relative to the
teacher, relative mCE (how much of the clean-to-corrupted drop the model adds), and teacher-student
agreement on corrupted inputs. The same seed gives the same corrupted images.

Definitions (Hendrycks & Dietterich, ICLR 2019, with the teacher as the baseline instead of AlexNet):
``CE_c = sum_s err(c, s) / sum_s err_teacher(c, s)``, ``mCE = mean_c CE_c``;
``relative CE_c = sum_s (err(c, s) - err_clean) / sum_s (err_teacher(c, s) - err_teacher_clean)``.
All are in percent; 100 means "as robust as the teacher".
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from torch.utils.data import DataLoader

from synth import load_images
from synth.data import eval_transform
from synth.seeds import mix_seed

from ._format import format_table
from .corruptions import CORRUPTIONS, corrupt, parse_corruptions, parse_severities
from ._distributed import sharded_batches
from .evaluate import Tally, match_folder_labels, model_num_classes

__all__ = ['evaluate_robustness', 'evaluate_folder_robustness', 'robustness_table', 'save_heatmap']

NOTHING_TO_MEASURE = ('Nothing to measure: the images have no labels (no class subfolders) and no teacher was given. '
                      'Pass a labelled folder, or a teacher (--teacher) to measure agreement with.')


@torch.no_grad()
def evaluate_robustness(model: Union[nn.Module, Mapping[str, nn.Module]], loader: Iterable, mean: Sequence[float],
                        std: Sequence[float], teacher: Optional[nn.Module] = None,
                        corruptions: Optional[Sequence[str]] = None, severities: Optional[Sequence[int]] = None,
                        seed: int = 0, device: str = 'cpu', progress: bool = True) -> Dict:
    """Clean and corrupted accuracy of ``model`` (and ``teacher``) on ``loader``.

    Args:
        model: one model, or a mapping ``{name: model}`` to evaluate several (e.g. students recovered
            in different ways) on the same corrupted images, corrupting and running the teacher once.
        loader: batches ``(images, labels)`` with images as float tensors in [0, 1], resized and
            cropped but NOT normalised (:func:`synth.data.eval_transform` with
            ``normalize=False``); labels of -1 count as unknown (agreement still works).
        mean, std: the models' normalisation, applied after corrupting.
        corruptions, severities: subsets (names or a comma string; default all 15 x 1-5).
        seed: the corrupted images are a function of (seed, corruption, severity, batch index).

    Under ``accelerate launch`` the batches (each with every corruption and severity) are split over the
    processes, batch i to process i mod n, and the counts summed: the numbers are those of one process.

    Returns:
        ``{'clean': {...}, 'corruptions': {name: {severity: {...}}}, 'summary': {...}}`` where each
        leaf holds ``top1`` (with labels), ``teacher_top1`` and ``agreement`` (with a teacher); for a
        mapping of models, ``{name: that dict}``.
    """
    corruptions = parse_corruptions(corruptions)
    severities = parse_severities(severities)
    models = dict(model) if isinstance(model, Mapping) else {None: model}
    if not models:
        raise ValueError('No model to evaluate: pass a model or a non-empty {name: model} mapping.')
    models = {name: m.eval().to(device) for name, m in models.items()}
    if teacher is not None:
        teacher = teacher.eval().to(device)
    mean_t = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)

    def run(images, labels, key):
        x = (images - mean_t) / std_t
        teacher_pred = teacher(x).argmax(1) if teacher is not None else None
        for name, m in models.items():
            counts[name][key].add(m(x), labels, teacher_pred)

    keys = ['clean'] + [(c, s) for c in corruptions for s in severities]
    counts = {name: {k: Tally() for k in keys} for name in models}
    batches = sharded_batches(loader)  # batch i on process i mod n; its corruption seeds as in one process
    for batch, _, (images, labels) in tqdm(batches, desc='robustness', unit='batch', disable=not progress):
        images, labels = images.to(device), torch.as_tensor(labels).to(device)
        if images.min() < 0 or images.max() > 1:
            raise ValueError('Images must be in [0, 1] before corrupting; build the loader with '
                             'eval_transform(data_config, normalize=False).')
        run(images, labels, 'clean')
        for c in corruptions:
            for s in severities:
                gen = torch.Generator(device=images.device).manual_seed(mix_seed(seed, CORRUPTIONS.index(c), s, batch))
                run(corrupt(images, c, s, gen), labels, (c, s))
    Tally.sum_over_processes(t for per_key in counts.values() for t in per_key.values())
    with_teacher = teacher is not None
    if not any(per_key['clean'].images for per_key in counts.values()):
        raise ValueError('The loader yielded no images.')
    if not with_teacher and not any(per_key['clean'].labelled for per_key in counts.values()):
        raise ValueError(NOTHING_TO_MEASURE)
    results = {}
    for name, per_key in counts.items():
        clean = per_key['clean']
        result = {'images': clean.images, 'labelled': clean.labelled, 'seed': seed, 'severities': list(severities),
                  'clean': clean.result(top5=False, teacher_top1=True),
                  'corruptions': {c: {str(s): per_key[c, s].result(top5=False, teacher_top1=True) for s in severities}
                                  for c in corruptions}}
        result['summary'] = _summary(result, with_teacher)
        results[name] = result
    return results if isinstance(model, Mapping) else results[None]


def evaluate_folder_robustness(model: Union[nn.Module, Mapping[str, nn.Module]], data: str, data_config: dict,
                               teacher: Optional[nn.Module] = None, corruptions=None, severities=None,
                               max_images: Optional[int] = None, batch_size: int = 32, seed: int = 0,
                               device: str = 'cpu', num_workers: int = 0, progress: bool = True) -> Dict:
    """:func:`evaluate_robustness` on an image source (folder, ``hf:NAME``, saved dataset), preprocessed with
    the model's data config; adds ``data`` and ``skipped_files`` (images that did not decode)."""
    corruptions, severities = parse_corruptions(corruptions), parse_severities(severities)  # fail before loading
    dataset = load_images(data, data_config, num_images=max_images, seed=seed,
                          transform=eval_transform(data_config, normalize=False), crops=False)
    first = next(iter(model.values())) if isinstance(model, Mapping) else model
    match_folder_labels(dataset, model_num_classes(first, data_config['input_size']))
    if teacher is None and not getattr(dataset, 'labelled', True):  # before hours of corrupting
        raise ValueError(NOTHING_TO_MEASURE)
    result = evaluate_robustness(model, DataLoader(dataset, batch_size=batch_size, num_workers=num_workers),
                                 data_config['mean'], data_config['std'], teacher=teacher, corruptions=corruptions,
                                 severities=severities, seed=seed, device=device, progress=progress)
    extra = {'data': data, 'skipped_files': getattr(dataset, 'skipped', 0)}
    return {name: {**r, **extra} for name, r in result.items()} if isinstance(model, Mapping) else {**result, **extra}


def _mean(values: List[Optional[float]]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ratio(num: float, den: float) -> Optional[float]:
    return 100 * num / den if den > 0 else None  # undefined (None in JSON) when the teacher makes no error


def _summary(result: Dict, with_teacher: bool) -> Dict:
    per = result['corruptions']
    summary: Dict = {}
    if with_teacher:
        summary['mean_corruption_agreement'] = _mean([v['agreement'] for c in per.values() for v in c.values()])
    if not result['labelled']:
        return summary
    summary['mean_corruption_top1'] = _mean([v['top1'] for c in per.values() for v in c.values()])
    if not with_teacher:
        return summary
    summary['teacher_mean_corruption_top1'] = _mean([v['teacher_top1'] for c in per.values() for v in c.values()])
    clean_err, teacher_clean_err = 100 - result['clean']['top1'], 100 - result['clean']['teacher_top1']
    ce, rce = {}, {}
    for name, by_severity in per.items():
        err = [100 - v['top1'] for v in by_severity.values()]
        base = [100 - v['teacher_top1'] for v in by_severity.values()]
        ce[name] = _ratio(sum(err), sum(base))
        rce[name] = _ratio(sum(e - clean_err for e in err), sum(b - teacher_clean_err for b in base))
    summary['ce'] = ce
    summary['mce'] = _mean(list(ce.values()))
    summary['relative_ce'] = rce
    summary['relative_mce'] = _mean(list(rce.values()))
    return summary


def _fmt(value: Optional[float], unit: str = '') -> str:
    return 'n/a' if value is None else f'{value:.1f}{unit}'


def robustness_table(result: Dict) -> str:
    """A readable table: one row per corruption, top-1 per severity (student / teacher when both)."""
    sev = result['severities']
    with_teacher = 'agreement' in result['clean']
    has_top1 = 'top1' in result['clean']
    key = 'top1' if has_top1 else 'agreement'

    def cell(v):
        if has_top1 and with_teacher:
            return f"{v['top1']:.1f}/{v['teacher_top1']:.1f}"
        return f'{v[key]:.1f}'

    header = ['corruption'] + [f'sev {s}' for s in sev] + (['CE %'] if 'ce' in result['summary'] else [])
    rows = []
    for name, by_severity in result['corruptions'].items():
        row = [name] + [cell(by_severity[str(s)]) for s in sev]
        if 'ce' in result['summary']:
            row.append(_fmt(result['summary']['ce'][name]))
        rows.append(row)
    what = 'top-1 % (student/teacher)' if has_top1 and with_teacher else \
        ('top-1 %' if has_top1 else 'agreement with the teacher %')
    s = result['summary']
    text = [f"{result['images']} images, {what}; clean: " + cell(result['clean']), format_table(rows, header)]
    if 'mean_corruption_top1' in s:
        line = f"mean corruption top-1: {s['mean_corruption_top1']:.2f}%"
        if 'mce' in s:
            line += (f" (teacher {s['teacher_mean_corruption_top1']:.2f}%)   mCE vs teacher: {_fmt(s['mce'], '%')}   "
                     f"relative mCE: {_fmt(s['relative_mce'], '%')}")
            if s['mce'] is None or s['relative_mce'] is None:
                line += '\n(n/a: the teacher makes no error on these corrupted images, or loses no accuracy to them)'

        text.append(line)
    if 'mean_corruption_agreement' in s:
        text.append(f"mean agreement with the teacher on corrupted images: {s['mean_corruption_agreement']:.2f}%")
    return '\n'.join(text)


def save_heatmap(result: Dict, path: str, title: Optional[str] = None) -> str:
    """A corruption x severity heatmap PNG of top-1 (and of student minus teacher top-1 with a teacher;
    agreement when there are no labels). Needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError('The heatmap needs matplotlib: pip install matplotlib (or practise-df[plots]).') from e
    names, sev = list(result['corruptions']), result['severities']
    has_top1 = 'top1' in result['clean']
    key = 'top1' if has_top1 else 'agreement'
    grid = [[result['corruptions'][c][str(s)][key] for s in sev] for c in names]
    panels = [(grid, 'top-1 %' if has_top1 else 'agreement with the teacher %', 'viridis', (0, 100))]
    if has_top1 and 'teacher_top1' in result['clean']:
        diff = [[result['corruptions'][c][str(s)]['top1'] - result['corruptions'][c][str(s)]['teacher_top1']
                 for s in sev] for c in names]
        span = max(1.0, max(abs(v) for row in diff for v in row))
        panels.append((diff, 'student - teacher top-1 (points)', 'RdBu', (-span, span)))
    size = (3.2 + 1.1 * len(sev) * len(panels), max(2.5, 0.8 + 0.38 * len(names)))
    fig, axes = plt.subplots(1, len(panels), figsize=size, squeeze=False)
    for ax, (values, label, cmap, (lo, hi)) in zip(axes[0], panels):
        im = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi, aspect='auto')
        ax.set_xticks(range(len(sev)), [str(s) for s in sev])
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel('severity')
        ax.set_title(label, fontsize=10)
        for i, row in enumerate(values):
            for j, v in enumerate(row):
                ax.text(j, i, f'{v:.0f}', ha='center', va='center', fontsize=7,
                        color='white' if cmap == 'viridis' and v < 60 else 'black')
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
