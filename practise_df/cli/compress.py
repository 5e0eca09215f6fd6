"""``practise-df compress``: the whole pipeline (``practise_df.pipeline``), and the recipes' entry point.

Each flag sets one field of :class:`practise_df.CompressConfig` (its ``dest`` is the field's dotted
path). Values come, lowest first, from the config's defaults, a recipe's defaults, ``--config FILE``
(``run.json`` of an earlier run, or YAML/JSON written by hand), and the flags given.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import Any, Dict, Optional, Sequence, Union

from synth import PRESETS

from .._format import format_interval, format_table
from ..pipeline import compress
from ..report import Report
from ..config import EXPORTS, CompressConfig, read_settings_file, renamed_settings
from ..finetune import DATAFREE_MIX, LOSSES, make_accelerator
from ..guard import SIGNALS
from ..recovery import MIN_Z, MIXES, PHOTO_CROPS, SIGNAL_IMAGE_SOURCE, SIGNAL_IMAGES
from ..scoring import ESTIMATORS
from . import _args
from ._run import run_command

SELECTION = ('scoring.drop', 'scoring.latency_reduction', 'scoring.blocks')  # one of them says what to drop


def add_compress_arguments(parser: argparse.ArgumentParser, until_drop: bool = False) -> argparse.ArgumentParser:
    """The flags of ``practise-df compress`` (the parser must leave unset flags out:
    ``argument_default=argparse.SUPPRESS``); with ``until_drop`` those of the stages up to the drop
    (``practise-df score``)."""
    defaults = _defaults()

    def add(group, *flags, dest, help, **kw):
        default = defaults.get(dest)
        shown = f' (default: {default})' if default not in (None, False) and '(default' not in help else ''
        if 'action' not in kw:  # shown as --num-images NUM_IMAGES, not the config's dotted path
            kw.setdefault('metavar', flags[0].lstrip('-').upper().replace('-', '_'))
        group.add_argument(*flags, dest=dest, help=help + shown, **kw)

    _args.add_model(parser, required=False)  # the teacher, the model to compress (or from --config)
    _args.deprecated(parser, '--teacher-weights', '--weights')
    g = parser.add_argument_group('images')
    add(g, '--images', dest='images.source',
        help='image folder, hf:NAME[:SPLIT], a save_to_disk folder, or crops:PHOTO.jpg / crops:DIR (random crops '
             'of natural photos); default: synthesise from the teacher (BatchNorm inversion)')
    add(g, '--num-images', dest='images.num_images', type=_args.positive_int, help=_args.NUM_IMAGES_HELP)
    add(g, '--heldout-images', dest='images.heldout', type=_args.positive_int,
        help=_args.HELDOUT_HELP + ' (default: a quarter of the images, at most 64)')
    add(g, '--real-images', dest='images.real', action='store_true',
        help='the images are real, representative data (few-shot): finetune with train-mode BatchNorm')
    add(g, '--synth-preset', dest='synthesis.preset', choices=sorted(PRESETS), help='synthesis settings')
    add(g, '--synth-steps', dest='synthesis.steps', type=_args.positive_int, help=_args.SYNTH_STEPS_HELP)
    if not until_drop:  # score's --iterations was its old spelling of --adaptor-steps (practise_df.cli.score)
        _args.deprecated(g, '--iterations', '--synth-steps')
    add(g, '--synth-batch-size', dest='synthesis.batch_size', type=_args.positive_int,
        help='images synthesised together')
    add(g, '--synth-micro-batch', dest='synthesis.micro_batch', type=_args.positive_int,
        help='images per forward pass: a larger batch is optimised in parts that match BatchNorm statistics as one set')
    g = parser.add_argument_group('block selection')
    sel = _args.add_selection(g, prefix='scoring.')
    if not until_drop:  # score's --blocks was its old spelling of --candidates (practise_df.cli.score)
        sel.add_argument('--blocks', dest='scoring.blocks', type=_args.block_list, metavar='B1,B2',
                         help=_args.BLOCKS_HELP)
    add(g, '--candidates', dest='scoring.candidates', type=_args.block_list, metavar='B1,B2',
        help='score only these blocks (default: every droppable block)')
    add(g, '--estimator', dest='scoring.estimator', choices=sorted(ESTIMATORS), help=_args.ESTIMATOR_HELP)
    add(g, '--score-images', dest='scoring.num_images', type=_args.positive_int,
        help='tiny set the adaptors are fitted on')
    add(g, '--adaptor-steps', dest='scoring.adaptor_steps', type=_args.positive_int,
        help="optimizer steps fitting the adaptors (default: the estimator's)")
    add(g, '--keep-adaptors', dest='scoring.keep_adaptors', action=argparse.BooleanOptionalAction,
        help='fold the adaptors fitted around the dropped blocks into the student (the official code only scores '
             'with them)')
    _args.deprecated(g, '--adaptors', '--keep-adaptors')
    _args.deprecated(g, '--no-adaptors', '--no-keep-adaptors')
    g = parser.add_argument_group('latency')
    add(g, '--latency-batch-size', dest='latency.batch_size', type=_args.positive_int, help=_args.LATENCY_BATCH_HELP)
    add(g, '--latency-device', dest='latency.device', type=_args.device,
        help='device latency is measured on (default: the training device)')
    _args.add_timing(g, prefix='latency.')
    _args.add_runtime(g, prefix='latency.')
    add(g, '--block-latency', dest='latency.block_latency', metavar='FILE',
        help='per-block latency measured elsewhere, e.g. on the deployment device (practise-df latency --per-block '
             '--output FILE); default: measured here')
    if until_drop:
        _add_run_flags(parser.add_argument_group('run'), until_drop)
        return parser
    g = parser.add_argument_group('finetuning')
    add(g, '--loss', dest='finetune.loss', choices=LOSSES, help='mir: feature mimicking; kd: logits; ce: labels')
    add(g, '--finetune-steps', dest='finetune.steps', type=_args.non_negative_int,
        help='optimizer steps; 0 keeps the student as dropped')
    _args.deprecated(g, '--finetune-iters', '--finetune-steps')
    add(g, '--finetune-batch-size', dest='finetune.batch_size', type=_args.positive_int,
        help='images per step and process')
    _args.deprecated(g, '--batch-size', '--finetune-batch-size')
    add(g, '--lr', dest='finetune.lr', type=float, help='learning rate (default: per loss, see practise_df.finetune)')
    add(g, '--freeze-bn', dest='finetune.freeze_bn', action=argparse.BooleanOptionalAction,
        help='keep BatchNorm statistics fixed while finetuning (default: yes, unless --real-images)')
    add(g, '--finetune-mix', dest='finetune.mix', type=float, metavar='FRACTION',
        help='keep this fraction of the finetuning update, interpolating the weights between the dropped and '
             'the finetuned student (WiSE-FT): the only finetuned candidate of the recovery choice; with --no-guard '
             f'the student kept (default there: {DATAFREE_MIX}, or 1 with --real-images)')
    add(g, '--gradient-accumulation-steps', '--gradient_accumulation_steps',
        dest='finetune.gradient_accumulation_steps', type=_args.positive_int, help='batches per optimizer step')
    add(g, '--checkpointing-steps', '--checkpointing_steps', dest='finetune.checkpoint_every',
        type=_args.non_negative_int, help='optimizer steps between checkpoints (0: only at the end)')
    add(g, '--eval-every', dest='finetune.eval_every', type=_args.non_negative_int,
        help="optimizer steps between evaluations while finetuning: the student's top-1 agreement with the teacher on "
             "the held-out images, on the progress line and in report.json's finetune.evaluations (0: none)")
    g = parser.add_argument_group('evaluation')
    add(g, '--eval-data', dest='eval.data', help='labelled image folder for top-1/top-5 at the end')
    add(g, '--eval-max-images', dest='eval.max_images', type=_args.positive_int, help='a seeded subset of it')
    add(g, '--eval-batch-size', dest='eval.batch_size', type=_args.positive_int, help='images per evaluation batch')
    add(g, '--guard', dest='eval.guard', action=argparse.BooleanOptionalAction,
        help='after finetuning, keep the student closest to the teacher on images finetuning never saw, among the '
             'dropped one and the finetuned one at each --finetune-mixes; the dropped one when no finetuned one is '
             'closer' + (f' by more than {MIN_Z:g} standard errors of the per-image differences' if MIN_Z else '')
             + ' (every candidate is in the report). --no-guard keeps '
             'the finetuned student at --finetune-mix')
    add(g, '--finetune-mixes', dest='eval.finetune_mixes', type=_args.mix_list, metavar='M1,M2',
        help='fractions of the finetuning update the recovery choice tries (WiSE-FT, no retraining; default: '
             f"{','.join(f'{m:g}' for m in MIXES)})")
    add(g, '--recovery-images', dest='eval.recovery_images', choices=SIGNAL_IMAGES,
        help='where the recovery choice measures closeness: pool (the run\'s images held out from finetuning, whole '
             'photos for crops), guard-images (--guard-images) or photos (scikit-image\'s sample photos; default: '
             f'guard-images when given, else {SIGNAL_IMAGE_SOURCE})')
    add(g, '--recovery-crops', dest='eval.recovery_crops', type=_args.positive_int, metavar='N',
        help=f'crops of the photos the recovery choice measures on (default: {PHOTO_CROPS}); each candidate and the '
             'teacher run once over them')
    add(g, '--guard-images', dest='eval.guard_images', type=_args.block_list, metavar='PHOTOS',
        help='your photos (files or folders, comma-separated) the recovery choice measures on, cropped')
    add(g, '--guard-signal', dest='eval.guard_signal', choices=sorted(SIGNALS),
        help='what measures closeness to the teacher: KL divergence of the predictions, top-1 agreement or feature '
             'MSE')
    add(g, '--export', dest='eval.export', choices=EXPORTS,
        help='also write the deployable ONNX file (float, or int8 quantized) into the run, checked against PyTorch, '
             'with its top-1 on --eval-data and its latency against the teacher in ONNX Runtime (needs '
             'practise-df[deploy])')
    add(g, '--robustness', dest='robustness.enabled', action='store_true',
        help='also evaluate teacher and student under ImageNet-C corruptions of --eval-data')
    add(g, '--robustness-corruptions', dest='robustness.corruptions', help='subset, e.g. noise,fog (default: all 15)')
    add(g, '--robustness-severities', dest='robustness.severities', help="e.g. '1,5' (default: 1-5)")
    add(g, '--license', dest='card.license', help="the model card's license (a Hub license id; default: unknown)")
    add(g, '--base-model', dest='card.base_model',
        help="the model card's base model (the teacher's Hub repo id; default: unknown)")
    _add_run_flags(parser.add_argument_group('run'), until_drop)
    return parser


def _add_run_flags(g, until_drop: bool) -> None:
    g.add_argument('--config', metavar='FILE', help="settings file (an earlier run's run.json, or YAML/JSON); flags "
                                                    'given override it')
    _args.add_output_dir(g)
    if not until_drop:
        g.add_argument('--resume', '--resume_from_checkpoint', dest='resume', action='store_true',
                       help='continue the run in --output-dir where it stopped')
    _args.add_common(g, device_flag=False)
    g.add_argument('--cpu', action='store_true', help='run on the CPU even if a GPU is present')
    if not until_drop:
        g.add_argument('--mixed-precision', '--mixed_precision', choices=['no', 'fp16', 'bf16'],
                       help='mixed precision for finetuning (Accelerate)')
        g.add_argument('--log-with', '--with_tracking', dest='log_with',
                       help='experiment tracker for Accelerate (tensorboard, wandb, ...)')


def compress_command_parser(subparsers):
    parser = subparsers.add_parser('compress', argument_default=argparse.SUPPRESS,
                                   help='the whole pipeline: images -> score -> drop -> finetune -> evaluate')
    add_compress_arguments(parser)
    parser.set_defaults(func=compress_command, render=render_report)
    return parser


def config_from_args(args: argparse.Namespace, defaults: Optional[Dict[str, Any]] = None) -> CompressConfig:
    """The run's config: ``defaults`` (a recipe's, nested like the config), then ``--config FILE``, then the
    flags given. A selection (drop / latency_reduction / blocks) given later replaces an earlier one."""
    layers = [renamed_settings(defaults or {})]
    if getattr(args, 'config', None):
        layers.append(renamed_settings(read_settings_file(args.config), args.config))
    fields = {f.name for f in dataclasses.fields(CompressConfig)}
    layers.append(_nest({k: v for k, v in vars(args).items() if k.split('.')[0] in fields}))
    merged: Dict[str, Any] = {}
    for layer in layers:
        scoring = layer.get('scoring') or {}
        if any(scoring.get(k.split('.')[1]) is not None for k in SELECTION) and 'scoring' in merged:
            merged['scoring'] = {k: v for k, v in merged['scoring'].items()
                                 if f'scoring.{k}' not in SELECTION}
        merged = _merge(merged, layer)
    for key, flag in (('model', '--model'), ('output_dir', '--output-dir')):
        if not merged.get(key):
            raise ValueError(f'compress needs {flag} (or a --config file that sets {key}).')
    return CompressConfig.from_dict(merged, source=getattr(args, 'config', None) or 'the settings')


def compress_command(args, defaults: Optional[Dict[str, Any]] = None, stop_after: Optional[str] = None,
                     config: Optional[CompressConfig] = None):
    """Build the config (unless given) and the Accelerator from parsed arguments and run the pipeline (up to
    ``stop_after``: :func:`practise_df.compress`)."""
    config = config or config_from_args(args, defaults)
    accelerator = make_accelerator(config.output_dir, config.finetune, cpu=getattr(args, 'cpu', False),
                                   mixed_precision=getattr(args, 'mixed_precision', None),
                                   log_with=getattr(args, 'log_with', None))
    if accelerator.is_main_process:
        _args.warn_random_weights(config.model, config.weights)
    if getattr(args, 'log_with', None):
        accelerator.init_trackers('practise-df', config=_flat(config.to_dict()))
    report = compress(config, overwrite=getattr(args, 'overwrite', False), resume=getattr(args, 'resume', False),
                      accelerator=accelerator, progress=not getattr(args, 'json', False), stop_after=stop_after)
    accelerator.end_training()
    return report


def render_report(r: Union[Report, dict]) -> str:
    """What compress prints: the report, or report.json's contents as read back."""
    if not r:  # non-main processes
        return ''
    if isinstance(r, dict):
        r = Report.from_dict(r)
    lat = r.latency
    rows = [('teacher', lat['teacher_ms'], r.params['teacher'], r.macs['teacher'] / 1e6),
            ('student', lat['student_ms'], r.params['student'], r.macs['student'] / 1e6)]
    text = (f"dropped: {', '.join(r.dropped_blocks)}"
            f"{' (adaptors fitted and folded)' if r.adaptors else ''}\n"
            + format_table(rows, ('model', f"latency ms (batch {lat['batch_size']}, {lat['device']})", 'params',
                                  'MMACs'))
            + f"\nlatency saved: {lat['saved_pct']:.1f}% ({_interval(lat)})   held-out top-1 agreement with the "
              f"teacher: {r.heldout_agreement:.1f}%")
    if lat.get('warning'):
        text += f"\nwarning: {lat['warning']}"
    if r.skipped_files:
        text += f"\n{r.skipped_files} file(s) of {r.image_source} did not decode and were skipped"
    if r.eval is not None:
        t, s = r.eval['teacher'], r.eval['student']
        if 'top1' in s:
            text += (f"\n{r.eval['data']}: teacher top-1 {t['top1']:.2f}%, student top-1 {s['top1']:.2f}% "
                     f"(agreement {s['agreement']:.1f}%)")
        else:
            text += (f"\n{r.eval['data']}: agreement with the teacher {s['agreement']:.1f}% (no top-1: "
                     f"{r.eval.get('labels', 'the images have no labels')})")
        others = {'before_finetune': 'before finetuning', 'finetuned': 'finetuned, whole update (not kept)'}
        for key, label in others.items():
            if key in r.eval and r.recovery is None:  # else the recovery table lists every candidate's top-1
                e = r.eval[key]
                text += f"\n  {label}: top-1 {e.get('top1', float('nan')):.2f}% (agreement {e['agreement']:.1f}%)"
        if r.eval.get('skipped_files'):
            text += f"\n  {r.eval['skipped_files']} image file(s) did not decode and were skipped"
    if r.export is not None:
        ex, lat_ex = r.export, r.export['latency']
        top1 = (r.eval or {}).get('exported', {}).get('top1')
        text += (f"\ndeployable {ex['format']} file: {ex['file']} ({ex['bytes'] / 1e6:.1f} MB): in ONNX Runtime "
                 f"{lat_ex['student_ms']:.4g} ms vs the teacher's {lat_ex['teacher_ms']:.4g} ms, latency saved "
                 f"{lat_ex['saved_pct']:.1f}% ({_interval(lat_ex)})")
        text += f", top-1 {top1:.2f}%" if top1 is not None else ''
        if lat_ex.get('warning') and lat_ex['warning'] != lat.get('warning'):
            text += f"\nwarning (ONNX Runtime): {lat_ex['warning']}"
    if r.recovery is not None:
        text += '\n' + _recovery_table(r.recovery)
    elif r.guard is not None:  # a report written before the choice had candidates
        text += f"\nguard: kept the {r.guard['kept']} student: {r.guard['reason']}"
    return text + f"\ncompressed model: {r.compressed_model}"


def _recovery_table(choice: dict) -> str:
    """The recovery choice: every candidate's closeness and gain over the dropped student, and which was kept."""
    signal = choice['signal']
    rows = [(('* ' if c['name'] == choice['kept'] else '  ') + c['name'], c['closeness'][signal],
             '-' if c['mix'] == 0 else f"{c['gain']:+.3g} ± {c['gain_se']:.2g}",
             '-' if c['top1'] is None else f"{c['top1']:.2f}") for c in choice['candidates']]
    return (f"recovery, measured on {choice['image_source']}: kept {choice['kept']}: {choice['reason']}\n"
            + format_table(rows, ('candidate', signal, 'gain vs dropped', 'top-1')))


def _interval(lat: dict) -> str:
    return f"95% interval {format_interval(lat)}, {lat.get('runs', '?')} runs"


def recipe_main(description: str, defaults: Dict[str, Any], argv: Optional[Sequence[str]] = None,
                prepare=None) -> int:
    """Entry point shared by the scripts in ``recipes/``: the compress flags over the recipe's
    ``defaults`` (nested like a settings file), an optional ``prepare(args, defaults)`` hook checked
    before any work, then the pipeline and its report."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     argument_default=argparse.SUPPRESS)
    add_compress_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(message)s')

    def run(args):
        if prepare is not None:
            prepare(args, defaults)
        return compress_command(args, defaults)
    return run_command(os.path.basename(sys.argv[0]), run, render_report, args)


def _defaults() -> Dict[str, Any]:
    """Dotted field name -> default value of CompressConfig and its groups (for --help)."""
    out: Dict[str, Any] = {}
    for f in dataclasses.fields(CompressConfig):
        if f.default_factory is not dataclasses.MISSING:  # the groups (scoring has no default: it is required)
            out.update({f'{f.name}.{name}': v for name, v in dataclasses.asdict(f.default_factory()).items()})
    return out


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
    nested: Dict[str, Any] = {}
    for key, value in flat.items():
        group, _, name = key.rpartition('.')
        (nested.setdefault(group, {}) if group else nested)[name] = value
    return nested


def _merge(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def _flat(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f'{prefix}{k}.'))
        elif isinstance(v, (int, float, str, bool)):
            out[prefix + k] = v
    return out
