"""A model card (``README.md`` in the Hugging Face Hub format) for a compressed-model folder, from the
report of ``practise-df compress``, so the folder can be published as it is.

The YAML front matter is written with ``huggingface_hub.ModelCardData``. Its tags do not claim that
timm loads the folder: the weights only fit the source architecture with the dropped blocks replaced
by identity, which :func:`practise_df.load_compressed` rebuilds.
"""
from __future__ import annotations

import json
import os
import shlex
import sys
from typing import Any, Dict, List, Optional, Sequence, Union

from huggingface_hub import ModelCardData

from practise_io import write_text_atomic

from .report import Report
from .robustness import robustness_table

README = 'README.md'
TAGS = ['practise-df', 'image-classification', 'pruned', 'block-dropping']


def command_line(argv: Optional[Sequence[str]] = None) -> str:
    """The command that runs now, as a shell line (the program's base name, then its arguments)."""
    argv = list(sys.argv if argv is None else argv)
    return shlex.join([os.path.basename(argv[0])] + argv[1:]) if argv else ''


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(c):
        return f'{c:.4g}' if isinstance(c, float) else str(c)
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    return '\n'.join(lines + ['| ' + ' | '.join(cell(c) for c in r) + ' |' for r in rows])


def _pct(value: Optional[float]) -> str:
    return 'n/a' if value is None else f'{value:.2f}%'


def _saving(lat: Dict[str, Any]) -> str:
    """The saving with its 95% interval and how it was measured (older reports have no interval)."""
    if lat.get('saved_low') is None:
        return f"{lat['saved_pct']:.1f}%" + (f" (no 95% interval: {lat['runs']} runs)" if 'runs' in lat else '')
    load = lat.get('load', {})
    return (f"{lat['saved_pct']:.1f}% (95% interval {lat['saved_low']:.1f}% to {lat['saved_high']:.1f}%, median of "
            f"{lat['runs']} paired runs; other processes used {load.get('other_cores', 0):.1f} of "
            f"{load.get('cpu_count', '?')} CPU cores meanwhile)")


def _accuracy(report: Report) -> List[str]:
    if report.eval is None:
        return ['## Accuracy', '',
                f"No labelled images were given. Top-1 agreement with the teacher on held-out "
                f"{'synthesized ' if report.image_source == 'synthesized' else ''}images: "
                f"{_pct(report.heldout_agreement)}. Check accuracy on labelled images of your own."]
    ev = report.eval
    rows = [('teacher', _pct(ev['teacher'].get('top1')), _pct(ev['teacher'].get('top5')), ''),
            ('student', _pct(ev['student'].get('top1')), _pct(ev['student'].get('top5')),
             _pct(ev['student'].get('agreement')))]
    if 'before_finetune' in ev:
        b = ev['before_finetune']
        rows.append(('student before finetuning', _pct(b.get('top1')), _pct(b.get('top5')), _pct(b.get('agreement'))))
    return ['## Accuracy', '', f"On `{ev['data']}` ({ev['student'].get('images', '?')} images):", '',
            _table(('model', 'top-1', 'top-5', 'top-1 agreement with the teacher'), rows)]


def model_card(report: Union[Report, Dict[str, Any]], license: Optional[str] = None, base_model: Optional[str] = None,
               command: Optional[str] = None, data_config: Optional[Dict[str, Any]] = None) -> str:
    """README.md text for a compressed model, from a ``compress`` report (``report.json``).

    Args:
        report: the :class:`~practise_df.report.Report` :func:`practise_df.compress` returns (or its
            ``report.json`` as a dict).
        license, base_model: Hub metadata (a license id, the teacher's Hub repo); ``unknown`` when None.
        command: the command that made the model (shown so it can be run again).
        data_config: the preprocessing saved in the folder's ``config.json``.
    """
    if isinstance(report, dict):
        report = Report.from_dict(report)
    images = report.image_source
    tags = TAGS + (['data-free'] if images == 'synthesized' else [])
    meta = ModelCardData(license=license or 'unknown', base_model=base_model or 'unknown',
                         library_name='practise-df', pipeline_tag='image-classification', tags=tags)
    dropped = report.dropped_blocks
    lat = report.latency
    where = f"{lat.get('runtime', 'torch')}, {lat['device']}" + (
        f", {lat['provider']}" if lat.get('provider') else '') + (
        f", {lat['threads']} threads" if lat.get('threads') else '')
    by_block = {s['block']: s for s in report.scores}
    weights = os.path.basename(str(report.weights))  # a local file's name, not this machine's path
    recovered_on = ('images synthesized from the model itself: no training data was used' if images == 'synthesized'
                    else f'`{images}`')
    choice = report.recovery  # the per-run choice among candidates (practise_df.recovery)
    if not report.finetune['steps']:
        recovery = ' The student was not finetuned after the blocks were dropped (0 finetuning steps).'
    elif choice is not None:
        shares = [f"{c['mix']:g}" if c['mix'] < 1 else 'all' for c in choice['candidates'] if c['mix']]
        mixes = ' or '.join([', '.join(shares[:-1]), shares[-1]] if len(shares) > 1 else shares)
        shipped = ('the student as dropped (not finetuned)' if choice['mix'] == 0 else
                   'the finetuned student with its whole update' if choice['mix'] == 1 else
                   f"the finetuned student keeping {choice['mix']:g} of the update")
        recovery = (f' It was then finetuned on {recovered_on}. Of the dropped student and the finetuned one keeping '
                    f'{mixes} of the update (WiSE-FT weight interpolation), {shipped} ships, chosen by closeness to '
                    f"the teacher on {choice['image_source']}: {choice['reason']}.")
    elif (report.guard or {}).get('kept') == 'dropped':  # a report written before the choice had candidates
        recovery = (f' It was finetuned on {recovered_on}, but the guard kept the student as dropped (not finetuned): '
                    f"{report.guard['reason']}.")
    else:
        recovery = f' The student was then finetuned (recovered) on {recovered_on}.'
    lines = [
        '---', meta.to_yaml(), '---', '',
        f"# {report.model} with {len(dropped)} block(s) dropped",
        '',
        f"Made with practise-df from `{report.model}` (weights: `{weights}`; base model: "
        f"{base_model or 'unknown'}) by dropping whole residual blocks (PRACTISE, Wang et al., CVPR 2023)."
        + recovery,
        '',
        '## Use',
        '',
        'The weights fit the source architecture with the dropped blocks replaced by identity, so load them '
        'with practise-df, not with timm or torchvision alone:',
        '',
        '```python',
        'import practise_df',
        "model = practise_df.load_compressed('hf-hub:ORG/NAME')  # or the local folder",
        '```',
        '',
        '`practise-df export --model FOLDER --format onnx --output model.onnx` writes an ONNX file that carries '
        'the preprocessing in its metadata.',
    ]
    if data_config:
        lines += ['', 'Preprocessing: ' + ', '.join(f'{k} `{v}`' for k, v in data_config.items()) + '.']
    adaptors = ('adaptors fitted around them and folded into the neighbouring layers' if report.adaptors
                else 'no adaptors')
    lines += ['', '## What was dropped', '',
              f"Blocks dropped: {', '.join(f'`{b}`' for b in dropped) or 'none'}; {adaptors}; "
              f"finetuning: {report.finetune['loss']}, {report.finetune['steps']} steps."]
    if by_block:
        lines += ['', _table(('block', 'recoverability (feature MSE)', 'latency saved alone'),
                             [(b, by_block[b]['recoverability'], _pct(by_block[b]['saved_pct']))
                              for b in dropped if b in by_block])]
    if choice is not None:
        signal = choice['signal']
        lines += ['', '## Which student ships', '',
                  f"Each candidate's closeness to the teacher on {choice['image_source']} (images finetuning never "
                  f"saw; no labels needed). {_ships_when(choice['min_z'])}", '',
                  _table(('candidate', 'share of the update kept', f'{signal} to the teacher', 'gain vs dropped',
                          'top-1', 'ships'),
                         [(c['name'], c['mix'], c['closeness'][signal],
                           '' if c['mix'] == 0 else f"{c['gain']:+.3g} ± {c['gain_se']:.2g}",
                           _pct(c['top1']), 'yes' if c['name'] == choice['kept'] else '')
                          for c in choice['candidates']])]
    lines += ['', '## Cost', '',
              _table(('', 'teacher', 'student'),
                     [(f"latency ms (batch {lat['batch_size']}, input {tuple(lat['input_size'])}; {where})",
                       lat['teacher_ms'], lat['student_ms']),
                      ('params', f"{report.params['teacher']:,}", f"{report.params['student']:,}"),
                      ('MACs', f"{report.macs['teacher'] / 1e6:.1f} M",
                       f"{report.macs['student'] / 1e6:.1f} M")]),
              '', f"Latency saved: {_saving(lat)}, measured on the machine that ran the job. Measure it where "
              'the model will run: `practise-df latency --model FOLDER --runtime onnxruntime`.',
              '']
    if lat.get('warning'):
        lines[-1:] = ['', f"**Warning:** {lat['warning']}", '']
    if report.export is not None:  # compress --export: the file that ships, measured as it runs
        ex = report.export
        top1 = (report.eval or {}).get('exported', {}).get('top1')
        lines += [f"Deployable file: `{os.path.basename(ex['file'])}` ({ex['format']}, beside this folder in the run); "
                  f"in ONNX Runtime it saves {_saving(ex['latency'])} against the teacher"
                  + (f"; top-1 {top1:.2f}%." if top1 is not None else '.'), '']
    lines += _accuracy(report)
    if report.robustness is not None:
        lines += ['', '## Robustness', '', 'ImageNet-C corruptions of the evaluation images (teacher as baseline):',
                  '', '```', robustness_table(report.robustness), '```']
    if command:
        lines += ['', '## How it was made', '', '```bash', command, '```']
    return '\n'.join(lines) + '\n'


def write_model_card(model_dir: str, report: Union[Report, Dict[str, Any]], license: Optional[str] = None,
                     base_model: Optional[str] = None, command: Optional[str] = None) -> str:
    """Write ``model_dir/README.md`` (the preprocessing read from its ``config.json``); returns its path."""
    with open(os.path.join(model_dir, 'config.json')) as f:
        data_config = json.load(f).get('data_config')
    path = os.path.join(model_dir, README)
    write_text_atomic(path, model_card(report, license, base_model, command, data_config))
    return path


def _ships_when(min_z: float) -> str:
    if min_z > 0:
        return (f'A finetuned candidate ships only when its gain over the dropped student exceeds {min_z:g} standard '
                'errors of the per-image differences.')
    return 'The candidate closest to the teacher ships; the dropped student when no finetuned one is closer.'
