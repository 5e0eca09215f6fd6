"""The compression pipeline, ``practise-df compress``: teacher -> images -> score -> drop -> finetune -> save.

Every argument that can be checked is checked before the first file is written, so a typo never costs
a synthesis. Every stage writes its result into the output directory before the next starts, so
re-running with ``resume=True`` skips what is done (images, block scores, finetuning checkpoints) and
picks up settings of the stages not yet run (:data:`practise_df.config.STAGE_SETTINGS`). Under
``accelerate launch`` every long stage uses every process: synthesis (images), scoring (blocks),
finetuning (data-parallel), the recovery choice and the final evaluation (batches); latency is measured on the main
process while the others wait, and the main process writes every file but the per-rank shards.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Subset

from practise_io import (RunLock, append_jsonl, check_outputs_apart, check_writable, differing_settings,
                         drop_partial_line, remove_leftovers, write_json_atomic)
from synth import SingleImageCrops, SynthesizedImages, get_preset, load_images, synthesize
from synth.data import ImageFolderDataset, eval_transform, train_transform
from synth.ood import photo_paths
from synth.synthesized import is_synthesized

from ._distributed import on_main_process
from .blocks import check_blocks, drop_blocks, find_blocks
from .checkpoint import Provenance, check_rebuildable, is_saved_model, load_compressed, load_model, save_compressed
from .config import STAGE_SETTINGS, CompressConfig, LatencyConfig, is_run_settings, renamed_settings
from .corruptions import parse_corruptions, parse_severities
from .evaluate import evaluate, match_folder_labels, model_num_classes
from .export import export_model, load_exported
from .finetune import DATAFREE_MIX, finetune, make_accelerator
from .guard import SIGNALS
from .latency import (block_latency, compare_latency, count_macs, count_params, read_block_latency,
                      runtime_info)
from .model_card import command_line, write_model_card
from .models import resolve_data_config
from .recovery import MIXES, choose_student, evaluate_candidates, signal_images, split_pool, student_at
from .report import Report
from .robustness import evaluate_folder_robustness, save_heatmap
from .runtime import require_deploy
from .scoring import ESTIMATORS, BlockScore, drop_and_recover, score_blocks, select_blocks

RUN_FILE = 'run.json'
SCORES_FILE = 'scores.json'
PARTIAL_SCORES_FILE = 'scores.partial.jsonl'  # one line per scored block, so an interrupted scoring resumes
PARTIAL_SCORES_PATTERN = 'scores.partial-rank{rank}.jsonl'  # the same, of the processes other than the main one
LATENCY_FILE = 'block_latency.json'
SYNTH_DIR = 'synth'
DROPPED_DIR = 'dropped'  # the student as dropped (adaptors folded with keep_adaptors), before finetuning
MODEL_DIR = 'model'  # model.safetensors + config.json + README.md (the model card)
REJECTED_DIR = 'rejected'  # the whole finetuned student when the recovery choice kept another
# The names earlier releases gave these folders: a run written then is renamed on --resume, removed by --overwrite.
OLD_DIRS = {'recovered': DROPPED_DIR, 'finetuned': REJECTED_DIR}
REPORT_FILE = 'report.json'
EXPORT_FILES = {'onnx': 'model.onnx', 'int8': 'model-int8.onnx'}  # --export: the deployable file
# What a run writes: --overwrite removes these and nothing else.
ARTEFACTS = (RUN_FILE, SCORES_FILE, PARTIAL_SCORES_FILE, LATENCY_FILE, SYNTH_DIR, DROPPED_DIR, 'checkpoints',
             MODEL_DIR, REJECTED_DIR, REPORT_FILE, 'robustness.png', *EXPORT_FILES.values(), *OLD_DIRS)


def _stage(accelerator, message: str) -> None:
    """Stage headers go to stderr, beside the progress bars, so stdout holds only the report."""
    accelerator.print(message, file=sys.stderr, flush=True)


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` loaded on the way, so that no stage loads it twice."""
    provenance: Provenance  # what rebuilds the teacher: the students' provenance adds their dropped blocks
    candidates: List[str]  # the blocks scoring considers
    block_latency: Optional[Dict[str, dict]] = None  # the --block-latency table
    pool: Optional[Dataset] = None  # the --images (None: synthesized by the images stage)
    eval_data: Optional[Dataset] = None  # --eval-data
    eval_labels: Optional[str] = None  # how eval_data's folders map to the model's classes (None: the model's)


@dataclass
class Selection:
    """What the scoring stage chose (``scores.json``): every candidate's score, lowest first, and the blocks
    dropped. ``scores`` is empty when the blocks were given (``--blocks``) and ``selected`` when nothing was
    asked to be dropped (``practise-df score`` without a selection). ``steps``: with ``--latency-reduction``,
    the whole student timed after each block added (blocks, saving and its 95% interval, runs)."""
    scores: List[BlockScore]
    selected: List[str]
    steps: List[Dict[str, Any]] = dataclasses.field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        data = {'scores': [s.to_dict() for s in self.scores], 'selected': list(self.selected)}
        return {**data, 'steps': list(self.steps)} if self.steps else data

    @classmethod
    def read(cls, path: str) -> 'Selection':
        data = json.load(open(path))
        return cls([BlockScore(**s) for s in data['scores']], list(data['selected']), data.get('steps', []))


@dataclass
class Run:
    """One run's fixed context, handed to every stage: the settings, the teacher and what was checked."""
    config: CompressConfig
    teacher: nn.Module
    data_config: Dict[str, Any]
    checked: CheckedInputs
    accelerator: Any
    latency: LatencyConfig  # config.latency with the device resolved
    progress: bool = True

    @property
    def out(self) -> str:
        return self.config.output_dir

    @property
    def timing(self) -> Dict[str, Any]:
        """Arguments of :mod:`practise_df.latency`'s measurements."""
        return self.latency.timing(self.data_config['input_size'])


@dataclass
class Dropped:
    """What the stages up to the drop produced: the images, their split, the selection and the student."""
    pool: Dataset
    train_pool: Dataset
    train_idx: List[int]
    held_idx: List[int]
    selection: Selection
    student: Optional[nn.Module]  # None when stopped after scoring
    provenance: Optional[Provenance]  # the student's


def compress(config: CompressConfig, overwrite: bool = False, resume: bool = False,
             accelerator=None, progress: bool = True, teacher: Optional[nn.Module] = None,
             stop_after: Optional[str] = None) -> Union['Report', Dropped]:
    """Run the pipeline; returns the :class:`Report` (also written to ``output_dir/report.json``).

    ``teacher``: the model to compress, built in code (``config.model`` then only names it in the report); by
    default it is built from ``config.model``, ``config.weights`` and the model arguments. To be saved, it must
    be rebuildable: made by :func:`practise_df.create_model` (``py:`` for a network of your own) or
    ``timm.create_model``; this is checked before any long stage.

    ``stop_after``: ``'scores'`` or ``'drop'`` (``practise-df score``) ends the run there and returns what it
    produced (:class:`Dropped`); the run folder is then one ``compress --resume`` continues.
    """
    if stop_after not in STOP_AFTER:
        raise ValueError(f"stop_after is one of {', '.join(map(str, STOP_AFTER))}, got {stop_after!r}.")
    check_settings(config, stop_after)
    if teacher is None:
        # random weights drawn from the seed: the same teacher in every run and on every rank
        teacher = load_model(config.model, config.weights, seed=config.seed, **config.model_arguments)
    data_config = resolve_data_config(teacher, **config.preprocessing)
    checked = check_inputs(config, teacher, data_config)  # before anything is written
    accelerator = accelerator or make_accelerator(config.output_dir, config.finetune)
    latency = dataclasses.replace(config.latency, device=config.latency.device or str(accelerator.device))
    run = Run(config, teacher, data_config, checked, accelerator, latency, progress)
    lock = RunLock(config.output_dir) if accelerator.is_main_process else None
    try:
        if lock is not None:
            if config.scoring.latency_reduction is not None and not _finished(config, resume, 'scores'):
                check_latency_target(run)
            prepare_output_dir(config, overwrite, resume, lock)
        accelerator.wait_for_everyone()
        torch.manual_seed(config.seed)
        dropped = drop_stage(run, stop_after)
        if stop_after is not None:
            return dropped
        return _finish(run, dropped, resume)
    finally:
        if lock is not None:
            lock.release()


def drop_stage(run: Run, stop_after: Optional[str] = None) -> Dropped:
    """Images, scores and selection, and the student with the selected blocks dropped (``dropped/``): what
    ``practise-df score`` and ``compress`` share. Each step's result is on disk before the next starts."""
    config, accelerator = run.config, run.accelerator
    pool, train_pool = _images(run)
    train_idx, held_idx = split_pool(pool, min(config.images.num_heldout, len(pool) - 1), config.seed)
    selection = _select(run, pool, train_idx, held_idx)
    if stop_after == 'scores' or not selection.selected:
        return Dropped(pool, train_pool, train_idx, held_idx, selection, None, None)
    chosen = selection.selected
    provenance = run.checked.provenance.dropping(chosen)

    # --- drop (and fit adaptors around the gaps when kept; main process, the others load it) ----------
    dropped_dir = os.path.join(run.out, DROPPED_DIR)
    if accelerator.is_main_process and not os.path.isfile(os.path.join(dropped_dir, 'model.safetensors')):
        if config.scoring.keep_adaptors:
            _stage(accelerator, f"[3/5] dropping {len(chosen)} block(s) and fitting adaptors: {', '.join(chosen)}")
            tiny = _stack(pool, train_idx[:config.scoring.num_images]).to(accelerator.device)
            recovered = drop_and_recover(run.teacher.to(accelerator.device), chosen, tiny,
                                         settings=_estimator(config), seed=config.seed)
            stage = 'blocks dropped, adaptors folded, before finetuning'
        else:
            _stage(accelerator, f"[3/5] dropping {len(chosen)} block(s): {', '.join(chosen)}")
            recovered, stage = drop_blocks(run.teacher, chosen), 'blocks dropped, before finetuning'
        save_compressed(recovered.to('cpu'), dropped_dir, provenance=provenance, overwrite=True,
                        extra={'stage': stage})
    elif accelerator.is_main_process:
        _stage(accelerator, f'[3/5] dropping: done earlier ({dropped_dir})')
    accelerator.wait_for_everyone()
    return Dropped(pool, train_pool, train_idx, held_idx, selection, load_compressed(dropped_dir), provenance)


def _select(run: Run, pool, train_idx, held_idx) -> Selection:
    """Score (blocks split over the processes) and select (main process); ``scores.json`` holds the result."""
    config, accelerator = run.config, run.accelerator
    scores_file = os.path.join(run.out, SCORES_FILE)
    if on_main_process(lambda: not os.path.isfile(scores_file)):  # one answer for every rank
        run.teacher.to(accelerator.device)
        if config.scoring.blocks is not None:
            _stage(accelerator, f"[2/5] dropping the given blocks, not scoring: {', '.join(config.scoring.blocks)}")
            selection = Selection([], list(config.scoring.blocks))
        else:
            _stage(accelerator, f'[2/5] scoring blocks ({config.scoring.estimator} estimator)')
            scores = _score(run, pool, train_idx, held_idx)
            selection = Selection(scores, [])
            if config.scoring.drop is not None or config.scoring.latency_reduction is not None:
                # latency_reduction re-measures latency: on the main process alone
                selection.selected = on_main_process(lambda: select_blocks(
                    scores, drop=config.scoring.drop, latency_reduction=config.scoring.latency_reduction,
                    model=run.teacher, latency_kwargs=run.timing, steps=selection.steps))
        if accelerator.is_main_process:
            write_json_atomic(scores_file, selection.to_dict())
    elif accelerator.is_main_process:
        _stage(accelerator, f'[2/5] block selection: done earlier ({scores_file})')
    accelerator.wait_for_everyone()
    return Selection.read(scores_file)


def _finish(run: Run, dropped: Dropped, resume: bool) -> 'Report':
    """Finetune, choose the student to keep, save, export and report: the stages after the drop."""
    config, accelerator, teacher = run.config, run.accelerator, run.teacher
    out, student = run.out, dropped.student
    dropped_dir = os.path.join(out, DROPPED_DIR)

    # --- finetune (every process) ------------------------------------------------------------------
    history: Dict[str, list] = {'loss': []}
    finetune_config = _finetune_config(config)
    if finetune_config.steps > 0:
        _stage(accelerator, f'[4/5] finetuning ({finetune_config.loss}, {finetune_config.steps} steps, '
                            f"BatchNorm {'frozen' if finetune_config.freeze_bn else 'in train mode'})")
        # the whole update: the share of it kept is chosen afterwards (recovery.py), or finetune.mix with --no-guard
        whole = dataclasses.replace(finetune_config, mix=None)
        heldout = Subset(dropped.pool, dropped.held_idx) if whole.eval_every else None  # --eval-every: watched
        history = finetune(student, teacher, Subset(dropped.train_pool, dropped.train_idx), whole,
                           accelerator=accelerator, output_dir=out, resume=resume, eval_data=heldout,
                           progress=run.progress)
    else:
        _stage(accelerator, '[4/5] finetuning: skipped (--finetune-steps 0: the student is kept as dropped)')

    # --- save (main process) and evaluate (images split over the processes) -------------------------
    _stage(accelerator, '[5/5] saving and evaluating')
    main = accelerator.is_main_process
    student, teacher = student.to('cpu').eval(), teacher.to('cpu').eval()
    guard, others = None, {}  # others: the students of a finetuned run that are not kept, by report name
    if finetune_config.steps > 0:
        others['before_finetune'] = load_compressed(dropped_dir)  # what finetuning added over dropping
        finetuned = student
        if config.eval.guard:
            lr = finetune_config.learning_rate
            student, guard = _guard(run, finetuned, others['before_finetune'], dropped, lr, main)
            if student is not finetuned:
                others['finetuned'] = finetuned  # the whole update, not kept
        else:  # no choice: the finetuned student at finetune.mix
            student = student_at(others['before_finetune'], finetuned, finetune_config.mix)
    model_dir = os.path.join(out, MODEL_DIR)
    if main:
        save_compressed(student, model_dir, provenance=dropped.provenance, overwrite=True,
                        extra={'scores': dropped.selection.to_dict()['scores']})
    exported = None
    if config.eval.export:  # written by the main process, then run by every process for the evaluation
        exported = on_main_process(lambda: _export(run, student))
        exported['module'] = load_exported(exported['file'], device=run.latency.device,
                                           threads=exported.pop('threads'))
    report = _report(run, student, others, dropped, history, model_dir, guard, exported)
    if main:
        write_json_atomic(os.path.join(out, REPORT_FILE), report.to_dict())
        write_model_card(model_dir, report, config.card.license, config.card.base_model, command_line())
        if config.robustness.enabled:  # pictures after the numbers: a failed plot loses nothing
            report.robustness['heatmap'] = _heatmap(report.robustness, out, config.model)
            write_json_atomic(os.path.join(out, REPORT_FILE), report.to_dict())
    accelerator.wait_for_everyone()
    return report if main else Report.empty()


# --- checks before the long work -------------------------------------------------------------------

STOP_AFTER = (None, 'scores', 'drop')


def check_settings(config: CompressConfig, stop_after: Optional[str] = None) -> None:
    """The names a settings file gives that live in a registry, and the paths it gives that must exist
    (:class:`CompressConfig` checks only what needs no import and no disk, so an old ``run.json`` always
    loads): checked before anything is built or written."""
    if config.scoring.selects is None and stop_after != 'scores':
        raise ValueError('Say what to drop: --drop K (blocks), --latency-reduction F (e.g. 0.25) or --blocks B1,B2 '
                         '(scoring.drop / latency_reduction / blocks in a settings file).')
    get_preset(config.synthesis.preset, config.synthesis.steps)  # an unknown preset, or fewer steps than its phases
    if config.scoring.estimator not in ESTIMATORS:
        raise ValueError(f"Unknown estimator '{config.scoring.estimator}'; choose from {sorted(ESTIMATORS)}.")
    if config.eval.guard_signal not in SIGNALS:
        raise ValueError(f"Unknown guard signal '{config.eval.guard_signal}'; choose from {', '.join(SIGNALS)}.")
    if config.eval.guard_images is not None:
        photo_paths(config.eval.guard_images)  # every path exists and folders hold photos
    parse_corruptions(config.robustness.corruptions)  # a bad name fails now, not after hours of work
    parse_severities(config.robustness.severities)


def check_inputs(config: CompressConfig, teacher, data_config) -> CheckedInputs:
    """Check every argument that can be checked without the long stages, and return what was loaded on the
    way (the teacher's provenance, candidate blocks, the block-latency table, the images) so it is not loaded
    twice."""
    provenance = check_rebuildable(teacher, data_config)  # a teacher that would be saved as another network fails now
    check_outputs_apart({'--output-dir': config.output_dir}, input_paths(config))
    input_size = data_config['input_size']
    candidates = find_blocks(teacher, input_size)
    scoring = config.scoring
    if not candidates:
        raise ValueError(f'{config.model} has no droppable residual block (see practise-df blocks --model ...).')
    if scoring.candidates is not None:
        candidates = check_blocks(teacher, scoring.candidates, candidates)
    if scoring.blocks is not None:
        check_blocks(teacher, scoring.blocks, candidates)
    if scoring.drop is not None and scoring.drop > len(candidates):
        raise ValueError(f'--drop {scoring.drop}: {config.model} has only {len(candidates)} '
                         f"{'droppable' if scoring.candidates is None else 'candidate'} blocks "
                         f"({', '.join(candidates)}).")
    latency = None
    if config.latency.block_latency:
        latency = read_block_latency(config.latency.block_latency)
        missing = [b for b in candidates if b not in latency]
        if missing and scoring.blocks is None:
            raise ValueError(f"{config.latency.block_latency} has no latency for block(s) {', '.join(missing)}; "
                             f"measure every candidate, e.g. practise-df latency --model {config.model} --per-block "
                             '--output FILE')
    pool = None
    if config.images.source is not None:
        images = config.images  # load_images refuses a missing path or photo with a message
        pool = load_images(images.source, data_config, num_images=images.num_images, seed=config.seed)
        if len(pool) < images.num_images:
            raise ValueError(f"{images.source} holds {len(pool)} readable image(s), fewer than --num-images "
                             f"{images.num_images}. Pass --num-images {len(pool)} or add images.")
    if config.eval.export or config.latency.runtime == 'onnxruntime':
        for package in ('onnx', 'onnxscript', 'onnxruntime'):  # before hours of work, not after
            require_deploy(package)
    eval_data = labels = None
    if config.eval.data:
        eval_data = ImageFolderDataset(config.eval.data, eval_transform(data_config),
                                       max_images=config.eval.max_images, seed=config.seed)
        labels = match_folder_labels(eval_data, model_num_classes(teacher, input_size))  # None: the model's
    return CheckedInputs(provenance, candidates, latency, pool, eval_data, labels)


def input_paths(config: CompressConfig) -> Dict[str, Any]:
    """{flag: path(s)} of every file or folder a run reads, which no output may replace or lie in."""
    source = config.images.source  # crops:P1,P2 reads photos P1 and P2
    return {'--model': config.model, '--weights': config.weights, '--eval-data': config.eval.data,
            '--images': source.split(':', 1)[1].split(',') if source and source.startswith('crops:') else source,
            '--guard-images': config.eval.guard_images, '--block-latency': config.latency.block_latency}


def _finished(config: CompressConfig, resume: bool, stage: str) -> bool:
    return resume and os.path.isdir(config.output_dir) and stage in finished_stages(config.output_dir)


def check_latency_target(run: Run) -> None:
    """Before the images: ``--latency-reduction`` can be reached at all, i.e. dropping every candidate saves
    that much (by the ``--block-latency`` table when given, else timed now by :func:`compare_latency`, the
    routine every other saving comes from: one model pair, up to ``--latency-max-seconds``). The point
    estimate decides, so only a target that not even the best guess reaches is refused here; the final
    check holds the student to the interval's low end."""
    candidates, target = run.checked.candidates, run.config.scoring.latency_reduction
    if run.checked.block_latency is not None:
        reachable = sum(run.checked.block_latency[b]['saved_pct'] for b in candidates) / 100
        how = 'by the --block-latency table'
    else:
        saving = compare_latency([run.teacher, drop_blocks(run.teacher, candidates)], **run.timing).savings[0]
        reachable, how = saving.pct / 100, f'measured on {run.latency.device}: {saving.describe()}'
    if reachable < target:
        raise ValueError(f'--latency-reduction {target:g} cannot be reached: dropping all {len(candidates)} droppable '
                         f'blocks saves {100 * reachable:.1f}% of the latency ({how}). Ask for less, or use --drop K.')


# --- the output directory ------------------------------------------------------------------------

def finished_stages(out: str) -> List[str]:
    """The stages whose results are on disk (:data:`practise_df.config.STAGE_SETTINGS` names them)."""
    done = []
    if os.path.isfile(os.path.join(out, SYNTH_DIR, 'metadata.jsonl')) or os.path.isfile(os.path.join(out, SCORES_FILE)):
        done.append('images')
    if os.path.isfile(os.path.join(out, SCORES_FILE)):
        done.append('scores')
    if os.path.isdir(os.path.join(out, 'checkpoints')) or os.path.isdir(os.path.join(out, MODEL_DIR)):
        done.append('finetune')
    if os.path.isfile(os.path.join(out, REPORT_FILE)):
        done.append('report')
    return done


def prepare_output_dir(config: CompressConfig, overwrite: bool = False, resume: bool = False,
                       lock: Optional[RunLock] = None) -> None:
    """Refuse to mix two runs in one directory or to touch one that is not a run; on ``resume`` refuse
    changed settings of finished stages and record those of the stages still to run; with ``overwrite``
    remove the earlier run's files (and nothing else)."""
    out = config.output_dir
    run_file = os.path.join(out, RUN_FILE)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--output-dir '{out}' is a file, not a directory; choose another path.")
    check_writable(out, '--output-dir', inside=True)
    earlier = [f for f in os.listdir(out) if f != RunLock.NAME] if os.path.isdir(out) else []
    if earlier and not is_run_settings(run_file):  # a file's name proves nothing: its content must be a run's
        raise FileExistsError(f"'{out}' is not empty and holds no {RUN_FILE} written by practise-df compress, so it "
                              "is not a practise-df run and nothing in it is replaced. Choose an empty or new "
                              "--output-dir; nothing was changed.")
    if earlier and earlier != [RUN_FILE]:  # a run that wrote only its settings did nothing yet: start it again
        if resume:
            _check_resume(config, run_file)
        elif not overwrite:
            raise FileExistsError(f"'{out}' already holds a practise-df run. Pass --resume to continue it or "
                                  "--overwrite to replace it.")
        else:
            _check_only_run_files(out)
    elif resume and not os.path.exists(out):
        raise FileNotFoundError(f"--resume: --output-dir '{out}' does not exist, so there is no run to continue. "
                                'Check the path, or drop --resume to start a new run.')
    os.makedirs(out, exist_ok=True)
    if lock is not None:
        lock.acquire()  # before anything is removed: a run still writing here keeps its files
    remove_leftovers(out, ARTEFACTS)  # a killed run's temporary copies, named by this run's code only
    if earlier and overwrite and not resume:
        for name in ARTEFACTS + tuple(os.path.basename(p) for p in _journals(out)):
            path = os.path.join(out, name)
            shutil.rmtree(path) if os.path.isdir(path) else (os.remove(path) if os.path.exists(path) else None)
    if earlier and resume:
        _rename_old_dirs(out)
    write_json_atomic(run_file, config.to_dict())


def _rename_old_dirs(out: str) -> None:
    """Give the folders of a run written by an earlier release today's names (``OLD_DIRS``), so it resumes."""
    for old, new in OLD_DIRS.items():
        path = os.path.join(out, old)
        if _written_by_a_run(path, old) and not os.path.lexists(os.path.join(out, new)):
            os.replace(path, os.path.join(out, new))


def _written_by_a_run(path: str, name: str) -> bool:
    """``path`` (the entry ``name`` of a run folder) is what a run writes there, not a file of the user's."""
    if name in (MODEL_DIR, DROPPED_DIR, REJECTED_DIR, *OLD_DIRS):
        return is_saved_model(path)
    if name == SYNTH_DIR:
        return is_synthesized(path) or (os.path.isdir(path) and not os.listdir(path))
    if name == 'checkpoints':
        return os.path.isdir(path) and all(
            e.startswith('checkpoint_') and e.split('_')[-1].isdigit() for e in os.listdir(path))
    return os.path.isfile(path)


def _check_only_run_files(out: str) -> None:
    """Before ``--overwrite`` removes anything: every entry it would remove is one a run writes."""
    foreign = [name for name in ARTEFACTS if os.path.lexists(os.path.join(out, name))
               and not _written_by_a_run(os.path.join(out, name), name)]
    if foreign:
        raise FileExistsError(f"--overwrite: in '{out}', {', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} "
                              'not what a practise-df run writes there, so nothing is removed. Move them away or '
                              'choose another --output-dir; nothing was changed.')


def _check_resume(config: CompressConfig, run_file: str) -> None:
    try:
        previous = renamed_settings(json.load(open(run_file)), run_file)  # an earlier release's names, as today's
    except json.JSONDecodeError as e:
        raise ValueError(f"'{run_file}' is damaged ({e}); start over with --overwrite.") from None
    current = config.to_dict()
    done = finished_stages(config.output_dir)
    fixed = [key for stage in done for key in STAGE_SETTINGS[stage]]
    differ = differing_settings(previous, current, fixed)
    if differ:
        raise ValueError(f"--resume: '{config.output_dir}' holds a run whose finished stage(s) ({', '.join(done)}) "
                         f"used other settings ({', '.join(differ)}). Resume with the same values, or use "
                         "--overwrite to start over.")


# --- stages ------------------------------------------------------------------------------------------

def _images(run: Run) -> Tuple[Dataset, Dataset]:
    """(pool, training pool): the images the run learns from (synthesized now, or loaded by
    :func:`check_inputs`), without and with training augmentation."""
    config, data_config, accelerator, loaded = run.config, run.data_config, run.accelerator, run.checked.pool
    images = config.images
    if images.source is None:
        synth_dir = os.path.join(config.output_dir, SYNTH_DIR)
        _stage(accelerator, f'[1/5] synthesising {images.num_images} images at '
                            f"{data_config['input_size'][-1]} px into {synth_dir}")
        syn = config.synthesis
        synthesize(run.teacher, synth_dir, images.num_images, data_config=data_config, preset=syn.preset,
                   steps=syn.steps, micro_batch=syn.micro_batch, batch_size=syn.batch_size, seed=config.seed,
                   device=accelerator.device, progress=run.progress and accelerator.is_main_process)
        read = dict(input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'])
        return SynthesizedImages(synth_dir, **read), SynthesizedImages(synth_dir, augment=True, **read)
    _stage(accelerator, f'[1/5] {images.num_images} images from {images.source}')
    if isinstance(loaded, SynthesizedImages):  # flips and shifts only: what synthesis optimised for
        train = copy.copy(loaded)
        train.augment = True
        return loaded, train
    if isinstance(loaded, SingleImageCrops) or not hasattr(loaded, 'transform'):
        return loaded, loaded  # crops are augmented already
    return loaded, _with_transform(loaded, train_transform(data_config))


def _with_transform(dataset: Dataset, transform) -> Dataset:
    """A shallow copy of ``dataset`` (same files) that applies ``transform`` instead of its own."""
    copy_ = copy.copy(dataset)
    copy_.transform = transform
    return copy_


def _stack(dataset: Dataset, indices: List[int]) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices])


def _estimator(config: CompressConfig):
    settings = ESTIMATORS[config.scoring.estimator]
    steps = config.scoring.adaptor_steps
    return settings if steps is None else dataclasses.replace(settings, steps=steps)


def _block_latency(run: Run, blocks: List[str]) -> Dict[str, dict]:
    """Latency saved per block: the user's file, the one measured earlier in this run, or measured now."""
    if run.checked.block_latency is not None:
        return run.checked.block_latency
    path = os.path.join(run.out, LATENCY_FILE)
    if os.path.isfile(path):
        return read_block_latency(path)
    measured = block_latency(run.teacher, blocks, **run.timing)
    if measured['warning']:
        print(f"      per-block {measured['warning']}", file=sys.stderr)
    write_json_atomic(path, measured)
    return measured['blocks']


def _journals(out: str) -> List[str]:
    """Every process's scoring journal: the main process's and those of the others."""
    return [os.path.join(out, PARTIAL_SCORES_FILE)] + sorted(glob.glob(os.path.join(out, PARTIAL_SCORES_PATTERN.format(
        rank='*'))))


def _read_partial_scores(out: str) -> Dict[str, BlockScore]:
    """The blocks scored so far, by any process (each appends to its own journal)."""
    done: Dict[str, BlockScore] = {}
    for path in _journals(out):
        drop_partial_line(path)  # a line cut short by a crash: its block is scored again
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for line in f:
                try:
                    score = BlockScore(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    break  # not a score line (edited by hand?): the blocks from here on are scored again
                done[score.block] = score
    return done


def _score(run: Run, pool, train_idx, held_idx) -> List[BlockScore]:
    """Score every candidate, the blocks split over the processes; each process appends its results to its own
    journal, so an interrupted run continues with the blocks no process finished, on any number of processes."""
    config, accelerator, candidates, out = run.config, run.accelerator, run.checked.candidates, run.out
    # Latency on the main process alone (the others wait), and one view of the journals for every rank.
    latency = on_main_process(lambda: _block_latency(run, candidates))
    done = on_main_process(lambda: _read_partial_scores(out))
    todo = [b for b in candidates if b not in done]
    if done:
        _stage(accelerator, f'      {len(done)} block(s) already scored in {out}; scoring {len(todo)}')
    rank = accelerator.process_index
    journal = os.path.join(out, PARTIAL_SCORES_FILE if rank == 0 else PARTIAL_SCORES_PATTERN.format(rank=rank))
    new = []
    if todo:
        tiny = _stack(pool, train_idx[:config.scoring.num_images])
        held = _stack(pool, held_idx)
        new = score_blocks(run.teacher, tiny, held, blocks=todo, settings=_estimator(config), latency=latency,
                           seed=config.seed, progress=run.progress,
                           on_score=lambda score: append_jsonl(journal, [score.to_dict()]))
    position = {block: i for i, block in enumerate(candidates)}
    return sorted(list(done.values()) + new, key=lambda s: (s.score, position[s.block]))


def _finetune_config(config: CompressConfig):
    """The run's finetuning settings, with its seed, BatchNorm mode and mix filled in. On real images
    (``images.real``) BatchNorm trains and the finetuned weights are kept whole, as the official few-shot
    setting; elsewhere BatchNorm keeps the teacher's statistics and, without the recovery choice (--no-guard),
    only ``DATAFREE_MIX`` of the update is kept (WiSE-FT), since out-of-domain images move the student away
    from real ones."""
    ft, real = config.finetune, config.images.real
    return dataclasses.replace(ft, seed=config.seed if ft.seed is None else ft.seed,
                               freeze_bn=(not real) if ft.freeze_bn is None else ft.freeze_bn,
                               mix=(1.0 if real else DATAFREE_MIX) if ft.mix is None else ft.mix)


def _guard(run: Run, finetuned, dropped_student, dropped: Dropped, lr: float, main: bool) -> Tuple[Any, Any]:
    """(the student to keep, the ``recovery.Choice``): the dropped student or ``finetuned`` at one of the mixes
    (``--finetune-mix``, else ``--finetune-mixes``), whichever is closest to the teacher on the signal images,
    a finetuned one only when closer than the dropped one by more than ``recovery.MIN_Z`` standard errors
    (``recovery.choose_student``). When another is kept, the whole finetuned student is saved in ``rejected/``
    (by the main process; every process measures its share of the images)."""
    config, ev = run.config, run.config.eval
    images, source = signal_images(ev.signal_images, run.data_config, dropped.pool, dropped.held_idx,
                                   ev.guard_images, config.seed, ev.recovery_crops)
    mixes = [config.finetune.mix] if config.finetune.mix is not None else ev.finetune_mixes or MIXES
    kept, choice = choose_student(run.teacher, dropped_student, finetuned, images, mixes, ev.guard_signal,
                                  lr=lr, source=source, batch_size=ev.batch_size)
    rejected_dir = os.path.join(config.output_dir, REJECTED_DIR)
    if kept is not finetuned:
        choice.finetuned_model = rejected_dir
        if main:
            save_compressed(finetuned, rejected_dir, provenance=dropped.provenance, overwrite=True,
                            extra={'stage': 'finetuned (the whole update), not kept by the recovery choice'})
    elif main:  # a student an earlier, resumed try of this run rejected is not what this run kept: it must not linger
        shutil.rmtree(rejected_dir, ignore_errors=True)
    return kept, choice


def _heatmap(result: dict, out: str, model: str) -> str:
    try:
        return save_heatmap(result, os.path.join(out, 'robustness.png'), title=f'{model}: student vs teacher')
    except (ImportError, OSError, ValueError) as e:  # the numbers are in the report either way
        return f'not drawn: {e}'


def _export(run: Run, student) -> Dict[str, Any]:
    """``--export``: the deployable ONNX file written into the run by :func:`export_model` (any batch size,
    checked against PyTorch, on ``--eval-data`` too), and loaded in ONNX Runtime for the report."""
    config = run.config
    path = os.path.join(config.output_dir, EXPORT_FILES[config.eval.export])
    result = export_model(student, path, 'onnx', data_config=run.data_config, batch_size=run.latency.batch_size,
                          dynamic_batch=True, data=config.eval.data, max_images=config.eval.max_images,
                          overwrite=True, seed=config.seed,
                          quantize='int8' if config.eval.export == 'int8' else None)
    threads = runtime_info('onnxruntime', run.latency.device, run.latency.threads)['threads']
    return {'file': path, 'format': config.eval.export, 'checks': result['checks'], 'bytes': result['bytes'],
            'threads': threads}


def _latency(timed, latency: LatencyConfig, size) -> Dict[str, Any]:
    (before, after), saving = timed.latencies, timed.savings[0]
    return {'device': latency.device, 'batch_size': latency.batch_size, 'input_size': list(size),
            'teacher_ms': before.median_ms, 'student_ms': after.median_ms, **saving.to_dict(),
            'runtime': before.runtime, 'threads': before.threads, 'provider': before.provider, **timed.to_dict()}


def _report(run: Run, student, others, dropped: Dropped, history, model_dir, guard, exported=None) -> Report:
    """The report, on every process: latency measured on the main process alone, the evaluations split over
    the processes (each on its own device)."""
    config, teacher, checked = run.config, run.teacher, run.checked
    size, ft, device = run.data_config['input_size'], _finetune_config(config), str(run.accelerator.device)
    progress = run.progress and run.accelerator.is_main_process

    def timings():
        deployed = None
        if exported is not None:  # what ships, against the teacher, both in ONNX Runtime
            deployed = compare_latency([teacher, exported['module']], **{**run.timing, 'runtime': 'onnxruntime'})
        # with --latency-runtime onnxruntime the final check is the exported file itself, when there is one
        shipped = deployed is not None and run.latency.runtime == 'onnxruntime'
        return (deployed if shipped else compare_latency([teacher, student], **run.timing)), deployed, shipped
    timed, deployed, shipped = on_main_process(timings)
    held = Subset(dropped.pool, dropped.held_idx)
    report = Report(
        model=config.model, weights=config.weights, image_source=config.images.source or 'synthesized',
        skipped_files=getattr(checked.pool, 'skipped', 0),  # --images files that did not decode
        dropped_blocks=dropped.selection.selected, adaptors=config.scoring.keep_adaptors,
        scores=dropped.selection.to_dict()['scores'], selection_steps=dropped.selection.steps,
        compressed_model=model_dir,
        latency={**_latency(timed, run.latency, size),
                 'student': exported['file'] if shipped else 'the PyTorch student'},
        params={'teacher': count_params(teacher), 'student': count_params(student)},
        macs={'teacher': count_macs(teacher, size), 'student': count_macs(student, size)},
        finetune={'loss': ft.loss, 'steps': ft.steps, 'freeze_bn': ft.freeze_bn,
                  'mix': ft.mix if guard is None else guard.mix,  # of the student kept
                  'final_loss': history['loss'][-1] if history['loss'] else None,
                  'evaluations': history.get('eval', [])},  # held-out agreement every eval_every steps
        heldout_agreement=evaluate(student, DataLoader(held, batch_size=config.eval.batch_size), device,
                                   teacher=teacher, progress=False)['agreement'])
    if checked.eval_data is not None:
        loader = DataLoader(checked.eval_data, batch_size=config.eval.batch_size)
        teacher_eval = evaluate(teacher, loader, device, progress=progress, return_predictions=True)
        predictions = teacher_eval.pop('predictions')  # agreement without running the teacher twice more
        report.eval = {'data': config.eval.data, 'skipped_files': checked.eval_data.skipped, 'teacher': teacher_eval,
                       'student': evaluate(student, loader, device, teacher=predictions, progress=progress)}
        if checked.eval_labels:
            report.eval['labels'] = checked.eval_labels
        # Both students of a finetuned run: the dropped one before finetuning, and a finetuned one the guard
        # rejected; the dropped one is the kept student when the guard rejected finetuning (evaluated once).
        for key, model in others.items():
            report.eval[key] = report.eval['student'] if model is student else \
                evaluate(model, loader, device, teacher=predictions, progress=progress)
        if guard is not None:  # every candidate's top-1
            evaluate_candidates(guard, others['before_finetune'], others.get('finetuned', student), report.eval,
                                lambda model: evaluate(model, loader, device, teacher=predictions, progress=progress))
    if exported is not None:
        report.export = {k: v for k, v in exported.items() if k != 'module'}
        report.export['latency'] = _latency(deployed, run.latency, size)
        if checked.eval_data is not None:
            report.eval['exported'] = evaluate(exported['module'], loader, 'cpu', teacher=predictions,
                                               progress=progress)
    if guard is not None:
        report.recovery, report.guard = guard.to_dict(), guard.guard_summary()
    if config.robustness.enabled:
        report.robustness = evaluate_folder_robustness(
            student, config.eval.data, run.data_config, teacher=teacher, corruptions=config.robustness.corruptions,
            severities=config.robustness.severities, max_images=config.eval.max_images,
            batch_size=config.eval.batch_size, seed=config.seed, device=device, progress=progress)
    return report
