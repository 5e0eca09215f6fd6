"""``synthesize``: a folder of class-balanced DeepInversion images, resumable and sharded across processes.

The images are cut into batches with fixed contents (batch ``b`` holds global indices
``[b * batch_size, (b + 1) * batch_size)`` and is seeded by ``(seed, b)``). Under ``accelerate launch``
batch ``b`` belongs to process ``b % num_processes``. A batch whose metadata lines are on disk is skipped
on a re-run, so repeating the command resumes; the result is the same whatever the interruptions.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from typing import List, Optional, Sequence, Tuple

import timm.data
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from practise_io import check_writable, guard_settings

from .inversion import evaluate_images, invert_batch, quantize
from .losses import batchnorm_layers
from .presets import InversionConfig, get_preset
from .seeds import mix_seed
from .synthesized import is_synthesized
from .writer import CONFIG, ShardWriter, image_name, merge_metadata, read_records

__all__ = ['synthesize', 'synthesize_shard', 'SynthesisJob', 'process_state', 'batch_seed', 'class_targets']

_logger = logging.getLogger(__name__)


def batch_seed(seed: int, batch_index: int) -> int:
    """Independent, reproducible seed of batch ``batch_index`` (numpy's SeedSequence mixing, so nearby
    user seeds do not share batches)."""
    return mix_seed(seed, batch_index)


def class_targets(indices: Sequence[int], classes: Sequence[int]) -> torch.Tensor:
    """Targets of global image indices: cycle through ``classes``, so any N is as balanced as it can be."""
    return torch.tensor([classes[i % len(classes)] for i in indices], dtype=torch.long)


def num_classes_of(model: nn.Module, data_config: dict, device) -> int:
    n = getattr(model, 'num_classes', None)
    if isinstance(n, int) and n > 0:
        return n
    was_training = model.training
    with torch.no_grad():  # torchvision models do not say; ask the classifier
        out = model.eval()(torch.zeros(1, *data_config['input_size'], device=device))
    model.train(was_training)
    return out.shape[-1]


def _check_classes(classes: Optional[Sequence[int]], num_classes: int) -> List[int]:
    if classes is None:
        return list(range(num_classes))
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError('classes is empty; pass at least one class index or None for all classes.')
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"Class indices {bad} are outside the teacher's {num_classes} classes "
                         f"(0..{num_classes - 1}).")
    return classes


def process_state(device=None):
    """Accelerate's view of this process, and the device it should use.

    ``device=None`` or a bare ``'cuda'`` means this process's own accelerator under ``accelerate launch``;
    a CPU device (or ``ACCELERATE_USE_CPU``, set by ``accelerate launch --cpu`` and ``debug_launcher``)
    makes a multi-process CPU run.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env
    requested = torch.device(device) if device is not None else None
    cpu = parse_flag_from_env('ACCELERATE_USE_CPU') or (requested is not None and requested.type == 'cpu')
    state = PartialState(cpu=cpu)
    if requested is None or (requested.index is None and requested.type == state.device.type):
        return state, state.device
    return state, requested


@dataclass(frozen=True)
class SynthesisJob:
    """What every process needs to make its share of a synthesized set (written to ``synth_config.json``)."""
    out_dir: str
    num_images: int
    config: InversionConfig
    resolution: int
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    batch_size: int
    seed: int
    classes: Tuple[int, ...]
    num_classes: int

    @property
    def num_batches(self) -> int:
        return math.ceil(self.num_images / self.batch_size)

    def batch_indices(self, b: int) -> List[int]:
        return list(range(b * self.batch_size, min(self.num_images, (b + 1) * self.batch_size)))

    def settings(self, model: nn.Module, student: bool) -> dict:
        """The settings the images depend on; a resumed run must use the same."""
        saved = {'config': asdict(self.config), 'resolution': self.resolution, 'batch_size': self.batch_size,
                 'seed': self.seed, 'classes': list(self.classes), 'num_classes': self.num_classes,
                 'mean': list(self.mean), 'std': list(self.std), 'student': student,
                 'model': getattr(model, 'practise_df_source', {}).get('model')}
        return json.loads(json.dumps(saved))  # tuples as lists, as JSON reads them back


def synthesize_shard(model: nn.Module, job: SynthesisJob, process_index: int = 0, num_processes: int = 1,
                     student: Optional[nn.Module] = None, device=None, amp: Optional[bool] = None,
                     progress: bool = True) -> dict:
    """Synthesise the batches of one process (``b % num_processes == process_index``) that are not on disk
    yet. Does not merge the metadata: see :func:`synth.writer.merge_metadata`."""
    class_width = max(4, len(str(job.num_classes - 1)))
    done = {}
    for r in read_records(job.out_dir) if os.path.isdir(job.out_dir) else []:
        done.setdefault(r['batch'], set()).add(r['index'])
    mine = range(process_index, job.num_batches, num_processes)
    todo = [b for b in mine if done.get(b, set()) != set(job.batch_indices(b))]
    skipped = len(mine) - len(todo)
    if skipped:
        _logger.info('Rank %d: %d batch(es) already on disk, skipped.', process_index, skipped)
    writer = ShardWriter(job.out_dir, process_index, class_width)
    passes, generated = 0, 0
    start = time.perf_counter()
    bar = tqdm(total=len(todo) * job.config.steps, unit='step', disable=not progress,
               desc=f'synth rank {process_index}' if num_processes > 1 else 'synth', dynamic_ncols=True)
    with bar:
        for b in todo:
            indices = job.batch_indices(b)
            targets = class_targets(indices, job.classes)
            seed_b = batch_seed(job.seed, b)
            result = invert_batch(model, targets, job.config, resolution=job.resolution, mean=job.mean, std=job.std,
                                  seed=seed_b, student=student, device=device, amp=amp,
                                  on_step=lambda _: bar.update(1))
            pixels, decoded = quantize(result.images, job.mean, job.std)
            # Metadata describes the saved 8-bit images, not the float ones.
            ev = evaluate_images(model, decoded, targets, device=device)
            records = [{
                'file_name': image_name(i, int(t), class_width), 'index': i, 'batch': b, 'seed': seed_b,
                'target': int(t), 'teacher_prob': float(ev['prob'][j]), 'teacher_top1': bool(ev['correct'][j]),
                'loss_total': float(result.best_loss[j]), 'loss_bn': float(ev['bn']), 'loss_ce': float(ev['ce'][j]),
                'loss_tv': float(ev['tv'][j]), 'loss_l2': float(ev['l2'][j]),
            } for j, (i, t) in enumerate(zip(indices, targets))]
            writer.write_batch(pixels, records)
            passes += result.teacher_passes
            generated += len(indices)
            bar.set_postfix(images=generated, bn=f"{float(ev['bn']):.3g}", p=f"{float(ev['prob'].mean()):.2f}")
    seconds = time.perf_counter() - start
    return {'rank': process_index, 'generated': generated, 'skipped_batches': skipped, 'teacher_passes': passes,
            'seconds': seconds}


def synthesize(
        model: nn.Module,
        out_dir: str,
        num_images: int,
        *,
        data_config: Optional[dict] = None,
        preset: str = 'fast',
        steps: Optional[int] = None,
        micro_batch: Optional[int] = None,
        config: Optional[InversionConfig] = None,
        batch_size: int = 32,
        seed: int = 0,
        classes: Optional[Sequence[int]] = None,
        student: Optional[nn.Module] = None,
        device=None,
        amp: Optional[bool] = None,
        progress: bool = True,
) -> dict:
    """Synthesise ``num_images`` class-balanced images from a BatchNorm teacher into ``out_dir``.

    Re-running the same call resumes. Under ``accelerate launch`` every process makes its own share
    (distinct batches, seeds and files) and the main process merges ``metadata.jsonl``. The images are
    made at the model's input size and should be used at that size (:class:`synth.SynthesizedImages`).

    Args:
        model: teacher with BatchNorm layers (timm or torchvision classifier). Moved to ``device``.
        out_dir: output image folder: new, empty, or an earlier synthesis with the same settings.
        num_images: exact number of images the folder holds at the end.
        data_config: the model's data config: input size and normalisation (default: timm's
            ``resolve_model_data_config``).
        preset: ``'fast'`` (ours) or ``'reference'`` (DeepInversion's published settings).
        steps: optimisation steps per batch (default: the preset's; its phases are scaled).
        micro_batch: images per forward pass; a larger batch is optimised in parts whose BatchNorm
            statistics are pooled, so the batch matches as a set (default: the config's, else one pass).
            Resuming and sharding work per batch, so the statistics are pooled within a batch.
        config: a full :class:`InversionConfig`, instead of ``preset``.
        batch_size: images optimised together (BatchNorm statistics are batch statistics: keep it >= 16).
        seed: base seed; batch ``b`` uses ``batch_seed(seed, b)``.
        classes: class indices to synthesise, cycled (default: all classes, balanced).
        student: optional student network for Adaptive DeepInversion's competition term.
        device: default: Accelerate's device for this process.
        amp: autocast (default: on CUDA only).
        progress: show a progress bar (main process only).

    Returns:
        Summary: images in the folder, images generated by this run, teacher passes, speed, the
        teacher's top-1 agreement with the targets, mean target probability and BatchNorm loss.
    """
    if num_images < 1 or batch_size < 1:
        raise ValueError(f'num_images ({num_images}) and batch_size ({batch_size}) must be positive.')
    batchnorm_layers(model, required=True)  # a model without BatchNorm statistics is refused before any write
    state, device = process_state(device)
    check_output_folder(out_dir)
    state.wait_for_everyone()  # every rank has checked the folder before the main process writes into it
    data_config = data_config or timm.data.resolve_model_data_config(model)
    preset_name = preset if config is None else 'custom'
    config = (config or get_preset(preset)).scaled(steps)
    if micro_batch is not None:
        config = replace(config, micro_batch=micro_batch)
    model.to(device)
    if student is not None:
        student.to(device)
    num_classes = num_classes_of(model, data_config, device)
    job = SynthesisJob(out_dir=out_dir, num_images=num_images, config=config,
                       resolution=int(data_config['input_size'][-1]), mean=tuple(data_config['mean']),
                       std=tuple(data_config['std']), batch_size=batch_size, seed=seed,
                       classes=tuple(_check_classes(classes, num_classes)), num_classes=num_classes)
    settings = job.settings(model, student is not None)
    with state.main_process_first():  # the main process writes the settings, the others then check them
        if state.is_main_process:
            os.makedirs(out_dir, exist_ok=True)
        guard_settings(os.path.join(out_dir, CONFIG), settings, write=state.is_main_process,
                       fix='Resume with the same settings, or write to a new output folder.')
    on_disk = len(read_records(out_dir))
    if on_disk > num_images:  # never delete images; the folder must end with exactly num_images
        raise ValueError(f"'{out_dir}' already holds {on_disk} synthesised images, more than num_images={num_images}. "
                         f"Pass num_images >= {on_disk} (or a new output folder).")

    shard = synthesize_shard(model, job, process_index=state.process_index, num_processes=state.num_processes,
                             student=student, device=device, amp=amp,
                             progress=progress and state.is_local_main_process)
    state.wait_for_everyone()  # every shard is on disk
    with state.main_process_first():
        records = merge_metadata(out_dir, num_images) if state.is_main_process else \
            [r for r in read_records(out_dir) if r['index'] < num_images]
    return summarize(records, shard, out_dir=out_dir, preset=preset_name, resolution=job.resolution,
                     steps=config.steps, batch_size=batch_size, num_processes=state.num_processes)


def check_output_folder(out_dir: str) -> None:
    """Synthesis writes into a new or empty folder, or resumes one of its own; any other folder is refused,
    so a user's files are never overwritten."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"'{out_dir}' is a file; synthesis needs a folder. Choose another path.")
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not is_synthesized(out_dir):
        raise FileExistsError(f"'{out_dir}' is not empty and holds no {CONFIG}, so it is not a synthesized set. "
                              "Choose a new or empty folder; nothing was changed.")
    check_writable(out_dir, 'output folder', inside=True)


def summarize(records: List[dict], shard: dict, **info) -> dict:
    """The summary dict of a run (also what ``practise-df synth --json`` prints)."""
    bn_per_batch = {r['batch']: r['loss_bn'] for r in records}
    n = len(records)
    return {
        **info,
        'num_images': n,
        'generated': shard['generated'],
        'skipped_batches': shard['skipped_batches'],
        'teacher_passes': shard['teacher_passes'],
        'teacher_passes_per_image': shard['teacher_passes'] / shard['generated'] if shard['generated'] else 0.0,
        'seconds': shard['seconds'],
        'images_per_second': shard['generated'] / shard['seconds'] if shard['seconds'] > 0 else 0.0,
        'top1_agreement': 100.0 * sum(r['teacher_top1'] for r in records) / n if n else 0.0,
        'mean_teacher_prob': sum(r['teacher_prob'] for r in records) / n if n else 0.0,
        'bn_loss': sum(bn_per_batch.values()) / len(bn_per_batch) if bn_per_batch else 0.0,
    }


