"""``practise-df compress``: teacher -> images -> score -> drop -> finetune -> evaluate -> save.

Every stage writes its result into the output directory before the next starts, so re-running with
``resume=True`` skips what is done (synthesised images, block scores, finetuning checkpoints).
Under ``accelerate launch`` synthesis and finetuning use every process; scoring, latency and the
final evaluation run on the main process while the others wait.
"""
from __future__ import annotations

import copy
import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import Dataset, Subset

from ._io import append_jsonl, drop_partial_line, write_json_atomic
from .blocks import drop_blocks, find_blocks
from .checkpoint import load_compressed, save_compressed
from .data import ImageFolderDataset, eval_transform, image_loader, train_transform
from .evaluate import evaluate
from .finetune import FinetuneConfig, finetune, make_accelerator
from .latency import RUNTIMES, block_latency_savings, count_macs, count_params, measure_latencies, runtime_info
from .model_card import command_line, write_model_card
from .models import create_model, resolve_data_config
from .scoring import ESTIMATORS, BlockScore, drop_and_recover, score_blocks, select_blocks

RUN_FILE = 'run.json'
SCORES_FILE = 'scores.json'
PARTIAL_SCORES_FILE = 'scores.partial.jsonl'  # one line per scored block, so an interrupted scoring resumes
LATENCY_FILE = 'block_latency.json'
RECOVERED_DIR = 'recovered'  # blocks dropped (and adaptors folded), before finetuning


@dataclass
class CompressConfig:
    """Everything one compression run needs; saved as ``run.json`` beside its outputs."""
    model: str
    output_dir: str
    weights: Optional[str] = None  # local file, 'pretrained', or None / 'random' for random init
    images: Optional[str] = None  # image folder / hf:NAME / saved dataset / crops:...; None = synthesise
    num_images: int = 256
    heldout_images: Optional[int] = None  # default: a quarter of num_images, at most 64
    resolution: Optional[int] = None  # square input size for everything (default: the model's)
    synth_resolution: Optional[int] = None  # synthesise smaller images (cheaper); they are resized on loading
    synth_preset: str = 'fast'
    synth_iterations: Optional[int] = None
    synth_batch_size: int = 32
    estimator: str = 'fast'
    score_images: int = 64  # tiny set the adaptors are fitted on
    # Fit adaptors around the gaps (on the tiny set) and fold them before finetuning. False keeps the dropped
    # model as is: on tf_efficientnet_lite0 adaptors fitted on synthesized images lowered real top-1
    # (benchmarks/bench_recovery.py).
    adaptors: bool = True
    drop: Optional[int] = None
    latency_reduction: Optional[float] = None
    latency_batch_size: int = 32
    latency_device: Optional[str] = None  # default: the training device
    latency_repeats: int = 10
    latency_runtime: Optional[str] = None  # 'torch' (default) or 'onnxruntime': where latency is measured
    latency_threads: Optional[int] = None  # default: torch's thread count
    block_latency: Optional[str] = None  # JSON of per-block savings measured elsewhere (e.g. the target device)
    eval_data: Optional[str] = None  # labelled image folder for top-1/top-5
    eval_max_images: Optional[int] = None
    robustness: bool = False  # also evaluate under ImageNet-C corruptions of eval_data
    robustness_corruptions: Optional[str] = None  # e.g. 'noise,fog'; default all 15
    robustness_severities: Optional[str] = None  # e.g. '1,5'; default 1-5
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    seed: int = 0
    license: Optional[str] = None  # model card metadata (Hub license id; 'unknown' when None)
    base_model: Optional[str] = None  # model card metadata (the teacher's Hub repo; 'unknown' when None)

    def __post_init__(self):
        if isinstance(self.finetune, dict):
            self.finetune = FinetuneConfig(**self.finetune)
        if (self.drop is None) == (self.latency_reduction is None):
            raise ValueError('Give exactly one of drop (a block count) or latency_reduction (a fraction).')
        if self.num_images < 2:
            raise ValueError('num_images must be at least 2: some images are held out to measure recoverability.')
        if self.robustness:
            if not self.eval_data:
                raise ValueError('robustness needs eval_data (--eval-data): a labelled image folder to corrupt.')
            from .corruptions import parse_corruptions, parse_severities
            parse_corruptions(self.robustness_corruptions)  # bad names fail now, not after hours of work
            parse_severities(self.robustness_severities)
        if self.latency_runtime not in (None,) + RUNTIMES:
            raise ValueError(f"Unknown latency runtime '{self.latency_runtime}'; choose from {', '.join(RUNTIMES)}.")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"Unknown estimator '{self.estimator}'; choose from {sorted(ESTIMATORS)}.")

    @property
    def num_heldout(self) -> int:
        n = self.heldout_images if self.heldout_images is not None else min(64, self.num_images // 4)
        return max(1, min(n, self.num_images - 1))

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def _stage(accelerator, message: str) -> None:
    """Stage headers go to stderr, beside the progress bars, so stdout holds only the report."""
    accelerator.print(message, file=sys.stderr, flush=True)


def prepare_output_dir(config: CompressConfig, overwrite: bool = False, resume: bool = False) -> None:
    """Refuse to mix two runs in one directory; remove an old run only when asked to."""
    out = config.output_dir
    run_file = os.path.join(out, RUN_FILE)
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(run_file):
            raise FileExistsError(f"'{out}' is not empty and holds no {RUN_FILE}, so it is not a practise-df run. "
                                  "Choose an empty or new --output-dir; nothing was changed.")
        previous = json.load(open(run_file))
        if resume:
            differ = sorted(k for k in set(previous) | set(config.to_dict())
                            if previous.get(k) != json.loads(json.dumps(config.to_dict())).get(k))
            if differ:
                raise ValueError(f"--resume: '{out}' holds a run with different settings ({', '.join(differ)}). "
                                 "Resume with the same arguments, or use --overwrite to start over.")
            return
        if not overwrite:
            raise FileExistsError(f"'{out}' already holds a practise-df run. Pass --resume to continue it or "
                                  "--overwrite to replace it.")
        shutil.rmtree(out)
    os.makedirs(out, exist_ok=True)
    write_json_atomic(run_file, config.to_dict())


def _images(config: CompressConfig, teacher, data_config, accelerator) -> Dataset:
    """The unlabeled-or-labelled image pool the run learns from, with the eval transform."""
    if config.images is None:
        from synth import synthesize
        synth_dir = os.path.join(config.output_dir, 'synth')
        _stage(accelerator, f'[1/5] synthesising {config.num_images} images into {synth_dir}')
        synthesize(teacher, synth_dir, config.num_images, data_config=data_config,
                   resolution=config.synth_resolution, iterations=config.synth_iterations,
                   batch_size=config.synth_batch_size, seed=config.seed, preset=config.synth_preset,
                   device=accelerator.device, progress=accelerator.is_main_process)
        return ImageFolderDataset(synth_dir, eval_transform(data_config))
    from synth import load_images
    _stage(accelerator, f'[1/5] loading {config.num_images} images from {config.images}')
    return load_images(config.images, data_config, num_images=config.num_images, seed=config.seed)


def _with_transform(dataset: Dataset, transform) -> Dataset:
    """A shallow copy of ``dataset`` (same files) that applies ``transform`` instead of its own."""
    copy_ = copy.copy(dataset)
    copy_.transform = transform
    return copy_


def _split(pool: Dataset, heldout: int, seed: int):
    perm = torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[heldout:]), sorted(perm[:heldout])


def _stack(dataset: Dataset, indices: List[int]) -> torch.Tensor:
    return torch.stack([dataset[i][0] for i in indices])


def _block_latency(config: CompressConfig, teacher, blocks: List[str], latency_kwargs: dict) -> Dict[str, dict]:
    """Latency saved per block: the user's file, the one measured earlier in this run, or measured now."""
    path = config.block_latency or os.path.join(config.output_dir, LATENCY_FILE)
    if os.path.isfile(path):
        table = read_block_latency(path)
        missing = [b for b in blocks if b not in table]
        if missing:
            raise ValueError(f"{path} has no latency for block(s) {', '.join(missing)}; measure every candidate, "
                             f"e.g. practise-df latency --model {config.model} --per-block --json > FILE")
        return table
    if config.block_latency:
        raise FileNotFoundError(f'--block-latency {path} does not exist.')
    table = block_latency_savings(teacher, blocks, **latency_kwargs)
    kw = latency_kwargs
    measured = runtime_info(kw.get('runtime', 'torch'), kw['device'], kw.get('threads'))
    write_json_atomic(path, {'blocks': table, **{k: latency_kwargs[k] for k in ('batch_size', 'device')}, **measured,
                       'input_size': list(latency_kwargs['input_size'])})
    return table


def read_block_latency(path: str) -> Dict[str, dict]:
    """Per-block savings from ``practise-df latency --per-block --json`` (or a plain {block: {...}} mapping)."""
    with open(path) as f:
        data = json.load(f)
    table = data.get('blocks', data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(isinstance(v, dict) and 'saved_pct' in v for v in table.values()):
        raise ValueError(f'{path} is not a per-block latency file: expected {{"blocks": {{BLOCK: {{"saved_ms": ..., '
                         '"saved_pct": ...}}}}}} as written by practise-df latency --per-block --json.')
    return table


def _read_partial_scores(path: str) -> Dict[str, BlockScore]:
    drop_partial_line(path)  # a line cut short by a crash: its block is scored again
    done: Dict[str, BlockScore] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                try:
                    score = BlockScore(**json.loads(line))
                except (json.JSONDecodeError, TypeError):
                    break  # not a score line (edited by hand?): the blocks from here on are scored again
                done[score.block] = score
    return done


def _score(config: CompressConfig, teacher, pool, train_idx, held_idx, latency_kwargs, progress) -> List[BlockScore]:
    """Score every candidate, appending each result to a journal so an interrupted run continues."""
    candidates = find_blocks(teacher, latency_kwargs['input_size'])
    latency = _block_latency(config, teacher, candidates, latency_kwargs)
    journal = os.path.join(config.output_dir, PARTIAL_SCORES_FILE)
    done = _read_partial_scores(journal)
    todo = [b for b in candidates if b not in done]
    if done:
        print(f'      {len(done)} block(s) already scored in {journal}; scoring {len(todo)}', file=sys.stderr)

    new = []
    if todo:
        tiny = _stack(pool, train_idx[:config.score_images])
        held = _stack(pool, held_idx)
        new = score_blocks(teacher, tiny, held, blocks=todo, estimator=config.estimator, latency=latency,
                           seed=config.seed, progress=progress,
                           on_score=lambda score: append_jsonl(journal, [score.to_dict()]))
    return sorted(list(done.values()) + new, key=lambda s: s.score)


def compress(config: CompressConfig, overwrite: bool = False, resume: bool = False,
             accelerator=None, progress: bool = True) -> Dict[str, Any]:
    """Run the whole pipeline; returns the report (also written to ``output_dir/report.json``)."""
    accelerator = accelerator or make_accelerator(config.output_dir, config.finetune)
    if accelerator.is_main_process:
        prepare_output_dir(config, overwrite, resume)
    accelerator.wait_for_everyone()
    out = config.output_dir
    torch.manual_seed(config.seed)

    weights = None if config.weights in (None, '', 'random') else config.weights
    teacher = create_model(config.model, weights)
    data_config = resolve_data_config(teacher, input_size=config.resolution)
    input_size = data_config['input_size']

    pool = _images(config, teacher, data_config, accelerator)
    if len(pool) < 2:
        raise ValueError(f'Only {len(pool)} image(s) available; compress needs at least 2.')
    train_idx, held_idx = _split(pool, min(config.num_heldout, len(pool) - 1), config.seed)

    # --- score and select (main process; the others read the result) -----------------------------
    scores_file = os.path.join(out, SCORES_FILE)
    latency_kwargs = dict(input_size=input_size, batch_size=config.latency_batch_size,
                          device=config.latency_device or str(accelerator.device), repeats=config.latency_repeats,
                          runtime=config.latency_runtime or 'torch', threads=config.latency_threads)
    if accelerator.is_main_process and not os.path.isfile(scores_file):
        _stage(accelerator, f'[2/5] scoring blocks ({config.estimator} estimator)')
        teacher.to(accelerator.device)
        scores = _score(config, teacher, pool, train_idx, held_idx, latency_kwargs, progress)
        chosen = select_blocks(scores, drop=config.drop, latency_reduction=config.latency_reduction,
                               model=teacher, latency_kwargs=latency_kwargs)
        write_json_atomic(scores_file, {'scores': [s.to_dict() for s in scores], 'selected': chosen})
    accelerator.wait_for_everyone()
    selection = json.load(open(scores_file))
    chosen = selection['selected']

    # --- drop, fit adaptors around the gaps and fold them (main process; the others load it) ---------
    recovered_dir = os.path.join(out, RECOVERED_DIR)
    if accelerator.is_main_process and not os.path.isfile(os.path.join(recovered_dir, 'model.safetensors')):
        if config.adaptors:
            _stage(accelerator, f"[3/5] dropping {len(chosen)} block(s) and fitting adaptors: {', '.join(chosen)}")
            tiny = _stack(pool, train_idx[:config.score_images]).to(accelerator.device)
            recovered = drop_and_recover(teacher.to(accelerator.device), chosen, tiny,
                                         settings=ESTIMATORS[config.estimator], seed=config.seed)
            stage = 'blocks dropped, adaptors folded, before finetuning'
        else:
            _stage(accelerator, f"[3/5] dropping {len(chosen)} block(s), no adaptors: {', '.join(chosen)}")
            recovered, stage = drop_blocks(teacher, chosen), 'blocks dropped, before finetuning'
        save_compressed(recovered.to('cpu'), recovered_dir, data_config=data_config, overwrite=True,
                        extra={'stage': stage})
    accelerator.wait_for_everyone()
    student = load_compressed(recovered_dir)

    # --- finetune (every process) ------------------------------------------------------------------
    from synth import SingleImageCrops  # its crops are already augmented
    augmentable = hasattr(pool, 'transform') and not isinstance(pool, SingleImageCrops)
    train_data = Subset(_with_transform(pool, train_transform(data_config)) if augmentable else pool, train_idx)
    history: Dict[str, list] = {'loss': []}
    if config.finetune.iterations > 0:
        _stage(accelerator, f'[4/5] finetuning ({config.finetune.loss}, {config.finetune.iterations} iterations)')
        history = finetune(student, teacher, train_data, config.finetune, accelerator=accelerator, output_dir=out,
                           resume=resume, progress=progress)

    # --- save and evaluate (main process) ---------------------------------------------------------
    report: Dict[str, Any] = {}
    if accelerator.is_main_process:
        _stage(accelerator, '[5/5] saving and evaluating')
        student = student.to('cpu').eval()
        teacher = teacher.to('cpu').eval()
        model_dir = save_compressed(student, os.path.join(out, 'model'), data_config=data_config, overwrite=True,
                                    extra={'scores': selection['scores']})
        report = _report(config, teacher, student, chosen, selection['scores'], history, pool, held_idx,
                         data_config, latency_kwargs, model_dir, progress)
        write_json_atomic(os.path.join(out, 'report.json'), report)
        write_model_card(model_dir, report, config.license, config.base_model, command_line())
    accelerator.wait_for_everyone()
    return report


def _robustness(config, teacher, student, data_config, device, progress) -> Dict[str, Any]:
    from .robustness import evaluate_robustness, save_heatmap
    data = ImageFolderDataset(config.eval_data, eval_transform(data_config, normalize=False),
                              max_images=config.eval_max_images, seed=config.seed)
    result = evaluate_robustness(student, torch.utils.data.DataLoader(data, batch_size=32), data_config['mean'],
                                 data_config['std'], teacher=teacher, corruptions=config.robustness_corruptions,
                                 severities=config.robustness_severities, seed=config.seed, device=device,
                                 progress=progress)
    try:
        result['heatmap'] = save_heatmap(result, os.path.join(config.output_dir, 'robustness.png'),
                                         title=f'{config.model}: student vs teacher')
    except ImportError as e:  # the numbers are in the report either way
        result['heatmap'] = f'not drawn: {e}'
    return result


def _report(config, teacher, student, chosen, scores, history, pool, held_idx, data_config, latency_kwargs,
            model_dir, progress) -> Dict[str, Any]:
    size = data_config['input_size']
    before, after = measure_latencies([teacher, student], **latency_kwargs)
    device = latency_kwargs['device']
    report = {
        'model': config.model, 'weights': config.weights, 'images': config.images or 'synthesized',
        'dropped_blocks': chosen, 'adaptors': config.adaptors, 'scores': scores, 'compressed_model': model_dir,
        'latency': {'device': device, 'batch_size': latency_kwargs['batch_size'], 'input_size': list(size),
                    'teacher_ms': before.median_ms, 'student_ms': after.median_ms,
                    'saved_pct': 100 * (1 - after.median_ms / before.median_ms),
                    'runtime': before.runtime, 'threads': before.threads, 'provider': before.provider},
        'params': {'teacher': count_params(teacher), 'student': count_params(student)},
        'macs': {'teacher': count_macs(teacher, size), 'student': count_macs(student, size)},
        'finetune': {'loss': config.finetune.loss, 'iterations': config.finetune.iterations,
                     'final_loss': history['loss'][-1] if history['loss'] else None},
    }
    held = torch.utils.data.DataLoader(Subset(pool, held_idx), batch_size=32)
    report['heldout_agreement'] = evaluate(student, held, device, teacher=teacher, progress=False)['agreement']
    if config.eval_data:
        loader = image_loader(config.eval_data, data_config, batch_size=32, max_images=config.eval_max_images,
                              seed=config.seed)
        teacher_eval = evaluate(teacher, loader, device, progress=progress, return_predictions=True)
        predictions = teacher_eval.pop('predictions')  # agreement without running the teacher twice more
        report['eval'] = {'data': config.eval_data, 'teacher': teacher_eval,
                          'student': evaluate(student, loader, device, teacher=predictions, progress=progress)}
        if config.finetune.iterations > 0:  # what finetuning added over the recovered (dropped) model alone
            recovered = load_compressed(os.path.join(config.output_dir, RECOVERED_DIR))
            report['eval']['before_finetune'] = evaluate(recovered, loader, device, teacher=predictions,
                                                         progress=progress)
    if config.robustness:
        report['robustness'] = _robustness(config, teacher, student, data_config, device, progress)
    return report
