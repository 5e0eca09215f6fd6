"""Finetune a pruned student against its teacher: one training loop, Accelerate does the device work.

Losses:
- ``mir`` (default): MiR feature mimicking, MSE between the student's and teacher's pre-pooling
  features (the official PRACTISE finetuning).
- ``kd``: logit distillation, KL divergence at temperature T (baseline).
- ``mir+kd``: both, the KD term weighted by ``kd_weight``.
- ``ce``: cross-entropy on labels ('BP' in the paper; needs labelled images).

The classifier stays as the teacher left it for every loss but ``ce``: it only maps features, and a
classifier trained on a few images forgets the classes they do not show. The optimizer follows the
official code: SGD, momentum 0.9, weight decay 1e-4, StepLR x0.1 at 40% of the steps; each loss
has its own default learning rate (:data:`DEFAULT_LR`), and gradients are clipped (``max_grad_norm``).
BatchNorm statistics stay frozen by default (``freeze_bn``): on synthesized or out-of-domain images
train-mode BatchNorm adopts their statistics and the student collapses on real ones. The official code
trains them, on real images; pass ``freeze_bn=False`` for real, representative images.
``steps`` counts optimizer steps; each step sees ``batch_size`` images per process (x gradient
accumulation). ``mix`` below 1 keeps only that fraction of what finetuning changed: the weights end at
``start + mix * (finetuned - start)``, WiSE-FT's weight-space ensemble of the student before and after
finetuning (Wortsman et al., CVPR 2022), which keeps part of the gain without all of the drift that
out-of-domain images cause (BENCHMARKS.md). The official code keeps the finetuned weights (``mix=1``).
"""
from __future__ import annotations

import logging
import math
import os
import random
import shutil
import sys
from typing import Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from synth.seeds import mix_seed

from ._distributed import needs_cpu_group
from .config import DEFAULT_LR, LOSSES, FinetuneConfig  # noqa: F401  (the finetuning settings, re-exported)
from .evaluate import Tally
from .models import PrePoolFeatures, classifier_parameters

_logger = logging.getLogger(__name__)

# Fraction of the finetuning update compress keeps on synthesized or out-of-domain images (``mix``) when it makes
# no choice (--no-guard; otherwise practise_df.recovery tries several), chosen on the dev images of
# bench_datafree: of 0.1, 0.25, 0.5 and 0.75 it gave the best mean and worst case over nine lite0 students
# finetuned on photos or synthesized images (0.25 suits photos, 0.1 synthesized images; BENCHMARKS.md).
DATAFREE_MIX = 0.1


class TrainState:
    """The optimizer-step counter, saved and restored with Accelerate's checkpoints."""

    def __init__(self):
        self.step = 0

    def state_dict(self):
        return {'step': self.step}

    def load_state_dict(self, state):
        self.step = int(state['step'])


class _Objective(nn.Module):
    """What the loss needs from the student: pre-pooling features (mir), logits (kd, ce) or both
    (mir+kd). Wrapping it in one module lets Accelerate prepare (DDP-wrap) exactly the part that is
    trained."""

    def __init__(self, student: nn.Module, loss: str):
        super().__init__()
        self.net = _outputs(student, loss)

    @property
    def student(self) -> nn.Module:
        return self.net.model if isinstance(self.net, PrePoolFeatures) else self.net

    def forward(self, x):
        return self.net(x)


COMPLETE_MARKER = 'practise_df_complete'


class SeededSamples(Dataset):
    """``dataset`` with the randomness of item ``index`` in epoch ``epoch`` fixed by ``(seed, epoch, index)``
    (torch, Python ``random`` and NumPy generators, restored afterwards).

    Random augmentations then no longer depend on the global RNG stream, which Accelerate's loader
    advances one batch ahead: without this, a run resumed from a checkpoint would augment the batches
    after it differently than the uninterrupted run did. Also makes augmentations independent of the
    number of processes and loader workers."""

    def __init__(self, dataset: Dataset, seed: int = 0):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        seed = mix_seed(self.seed, self.epoch, index)
        py_state, np_state = random.getstate(), np.random.get_state()  # timm's crops draw from `random`
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                random.seed(seed)
                np.random.seed(seed)
                return self.dataset[index]
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def latest_checkpoint(output_dir: str) -> Optional[str]:
    """The newest complete ``checkpoints/checkpoint_N`` under ``output_dir``, or None.

    A checkpoint counts once its marker file is written after Accelerate's ``save_state`` returned,
    so one cut short by a crash is never resumed from."""
    complete = {n: path for n, path in _checkpoint_folders(output_dir).items()
                if os.path.exists(os.path.join(path, COMPLETE_MARKER))}
    return complete[max(complete)] if complete else None


def _checkpoint_folders(output_dir: str) -> Dict[int, str]:
    """Every ``checkpoints/checkpoint_N`` folder under ``output_dir``, complete or not, by N."""
    root = os.path.join(output_dir, 'checkpoints')
    names = os.listdir(root) if os.path.isdir(root) else []
    return {int(d.split('_')[-1]): os.path.join(root, d) for d in names
            if d.startswith('checkpoint_') and d.split('_')[-1].isdigit()}


def _discard_incomplete_checkpoints(accelerator: Accelerator, output_dir: str) -> None:
    """Remove checkpoint folders a crash cut short, and number new checkpoints after the newest folder.

    A cut-short folder would otherwise count towards ``keep_checkpoints`` and push the last complete
    checkpoint out of the rotation; its number is never reused, so Accelerate does not refuse to write."""
    folders = _checkpoint_folders(output_dir)
    accelerator.wait_for_everyone()  # every rank has listed the folders before any is removed
    if accelerator.is_main_process:
        for path in folders.values():
            if not os.path.exists(os.path.join(path, COMPLETE_MARKER)):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    if folders:
        accelerator.project_configuration.iteration = max(folders) + 1


def _save_checkpoint(accelerator: Accelerator) -> str:
    path = accelerator.save_state()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        open(os.path.join(path, COMPLETE_MARKER), 'w').close()
    accelerator.wait_for_everyone()
    return path


def make_accelerator(output_dir: Optional[str] = None, config: Optional[FinetuneConfig] = None,
                     **kwargs) -> Accelerator:
    """An Accelerator set up for :func:`finetune`: numbered checkpoints under ``output_dir/checkpoints``
    and a seedable sampler so a resumed run sees the same batches.

    Launched as several processes on a machine without GPUs, Accelerate forms a (gloo) process group
    only when asked for the CPU; otherwise every process would run alone as the main process. So the
    CPU is asked for in that case."""
    config = config or FinetuneConfig()
    if needs_cpu_group():
        kwargs['cpu'] = True
    project = ProjectConfiguration(project_dir=output_dir or '.', automatic_checkpoint_naming=True,
                                   total_limit=config.keep_checkpoints)
    return Accelerator(project_config=project, gradient_accumulation_steps=config.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True), **kwargs)


def finetune(student: nn.Module, teacher: nn.Module, train_data: Dataset, config: FinetuneConfig = FinetuneConfig(),
             accelerator: Optional[Accelerator] = None, output_dir: Optional[str] = None, resume: bool = False,
             eval_data: Optional[Dataset] = None, progress: bool = True, on_step=None) -> Dict[str, List]:
    """Train ``student`` to mimic ``teacher`` on ``train_data`` (a dataset of ``(image, label)``).

    Args:
        accelerator: made with :func:`make_accelerator` when None. Pass your own to choose
            ``mixed_precision``, ``log_with`` (trackers) or ``cpu``.
        output_dir: where checkpoints go (``output_dir/checkpoints/checkpoint_N``); needed for resume.
        resume: continue from the newest checkpoint in ``output_dir`` (same batches, same RNG state).
        eval_data: evaluated every ``config.eval_every`` steps and at the end (top-1 when labelled,
            top-1 agreement with the teacher always).
        on_step: called as ``on_step(step, loss)`` after every optimizer step (main process).

    Returns:
        A history dict: ``step``, ``loss`` (every step) and ``eval`` (list of metric dicts; the last one
        measures the returned student, after ``config.mix``).
        ``student`` is trained in place (unwrapped from any DDP wrapper). With ``config.mix`` below 1 its weights
        end between those it was passed with and the finetuned ones; checkpoints hold the finetuned ones,
        so a finished run resumed with another ``mix`` needs no training.
    """
    accelerator = accelerator or make_accelerator(output_dir, config)
    mix = 1.0 if config.mix is None else config.mix
    start = _copy_state(student) if mix < 1 else None  # before any checkpoint is loaded
    seed = config.seed or 0
    set_seed(seed)
    student.requires_grad_(True)  # a copy of a frozen teacher must still train
    if config.loss != 'ce':  # the classifier only maps features; distillation keeps it as the teacher left it
        for p in classifier_parameters(student):
            p.requires_grad_(False)
    objective = _Objective(student, config.loss)
    teacher_outputs = _outputs(teacher, config.loss)
    teacher.eval().to(accelerator.device)  # never wrapped or trained; run under no_grad below
    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    # Stepped by hand once per optimizer step, so the schedule does not depend on the number of processes.
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, max(1, int(config.step_at * config.steps)), 0.1)
    train_data = SeededSamples(train_data, seed)
    loader = DataLoader(train_data, batch_size=config.batch_size, shuffle=True, drop_last=len(train_data) >=
                        config.batch_size * accelerator.num_processes, num_workers=config.num_workers)
    objective, optimizer, loader = accelerator.prepare(objective, optimizer, loader)
    state = TrainState()
    accelerator.register_for_checkpointing(scheduler, state)

    if resume:
        if output_dir is None:
            raise ValueError('resume=True needs output_dir, where the checkpoints are.')
        _discard_incomplete_checkpoints(accelerator, output_dir)
        checkpoint = latest_checkpoint(output_dir)
        if checkpoint is not None:
            accelerator.load_state(checkpoint)
            accelerator.print(f'resumed from {checkpoint} at step {state.step}', file=sys.stderr)

    history: Dict[str, List] = {'step': [], 'loss': [], 'eval': []}
    steps_per_epoch = max(1, len(loader) // config.gradient_accumulation_steps)
    bar = tqdm(total=config.steps, initial=state.step, desc=f'finetune ({config.loss})',
               disable=not (progress and accelerator.is_main_process))
    last_checkpoint = latest_checkpoint(output_dir) if output_dir else None
    held_out: Dict[str, str] = {}  # the last evaluation, on the progress line
    while state.step < config.steps:
        epoch, done_in_epoch = divmod(state.step, steps_per_epoch)
        loader.set_epoch(epoch)
        train_data.set_epoch(epoch)  # Accelerate does not pass it on when the sampler takes it
        batches = accelerator.skip_first_batches(loader, done_in_epoch * config.gradient_accumulation_steps) \
            if done_in_epoch else loader
        _train_mode(objective, config.freeze_bn is not False)
        for images, labels in batches:
            with accelerator.accumulate(objective):
                with torch.no_grad():
                    target = teacher_outputs(images)
                out = objective(images)
                loss = _loss(config, out, target, labels)
                accelerator.backward(loss)
                if config.max_grad_norm is not None and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            loss_value = accelerator.gather(loss.detach()[None]).mean().item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f'Finetuning loss became {loss_value} at step {state.step}. Last good checkpoint: '
                    f'{last_checkpoint or "none"}. Lower the learning rate (--lr) and resume from it.')
            history['step'].append(state.step)
            history['loss'].append(loss_value)
            accelerator.log({'train/loss': loss_value, 'train/lr': scheduler.get_last_lr()[0]}, step=state.step)
            bar.update(1)
            bar.set_postfix(loss=f'{loss_value:.4g}', **held_out)
            if on_step is not None and accelerator.is_main_process:
                on_step(state.step, loss_value)
            final = state.step >= config.steps
            if output_dir and (final or (config.checkpoint_every and state.step % config.checkpoint_every == 0)):
                last_checkpoint = _save_checkpoint(accelerator)
            if final:
                break
            if eval_data is not None and config.eval_every and state.step % config.eval_every == 0:
                _evaluate(accelerator, objective, teacher, eval_data, config, history, state.step)
                held_out['agreement'] = f"{history['eval'][-1]['agreement']:.1f}%"  # with the teacher, on eval_data
                _train_mode(objective, config.freeze_bn is not False)
    bar.close()
    if start is not None:
        interpolate_weights(accelerator.unwrap_model(objective).student, start, mix)
    if eval_data is not None:
        _evaluate(accelerator, objective, teacher, eval_data, config, history, state.step)
    accelerator.wait_for_everyone()
    return history


def _evaluate(accelerator, objective, teacher, eval_data, config, history, step) -> None:
    metrics = evaluate_distributed(accelerator, objective, teacher, eval_data, config)
    metrics['step'] = step
    history['eval'].append(metrics)
    accelerator.log({f'eval/{k}': v for k, v in metrics.items() if k != 'step'}, step=step)


def _copy_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {k: v.detach().to('cpu', copy=True) for k, v in model.state_dict().items() if v.is_floating_point()}


@torch.no_grad()
def interpolate_weights(model: nn.Module, start: Dict[str, torch.Tensor], mix: float) -> nn.Module:
    """Move ``model``'s floating-point weights and buffers to ``start + mix * (model - start)``, in place.

    ``start`` is a state dict of the same architecture (e.g. ``dropped.state_dict()`` before finetuning):
    ``mix=1`` leaves ``model`` as it is, ``mix=0`` restores ``start``. WiSE-FT's weight-space ensemble.
    """
    state = model.state_dict()
    missing = [k for k, v in state.items() if v.is_floating_point() and k not in start]
    if missing:
        raise KeyError(f'start has no weights for {missing[:3]}; pass the state dict of the same model before '
                       'finetuning.')
    for k, v in state.items():
        if v.is_floating_point():
            v.copy_(torch.lerp(start[k].to(v), v, mix))
    return model


def _train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm statistics kept fixed (eval mode) when ``freeze_bn``."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def _outputs(model: nn.Module, loss: str) -> nn.Module:
    """The module whose output ``loss`` compares: features, logits, or (features, logits)."""
    if loss == 'mir':
        return PrePoolFeatures(model)
    if loss == 'mir+kd':
        return PrePoolFeatures(model, with_logits=True)
    return model


def _kd(out: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(out.float() / t, 1), F.softmax(target.float() / t, 1),
                    reduction='batchmean') * t * t


def _loss(config: FinetuneConfig, out, target, labels: torch.Tensor) -> torch.Tensor:
    if config.loss == 'mir':
        return F.mse_loss(out.float(), target.float())
    if config.loss == 'kd':
        return _kd(out, target, config.kd_temperature)
    if config.loss == 'mir+kd':
        return (F.mse_loss(out[0].float(), target[0].float())
                + config.kd_weight * _kd(out[1], target[1], config.kd_temperature))
    if (labels < 0).any():
        raise ValueError("The 'ce' loss needs labelled images (one subfolder per class); these have none. "
                         "Use 'mir' or 'kd', which learn from the teacher.")
    return F.cross_entropy(out.float(), labels)


@torch.no_grad()
def evaluate_distributed(accelerator: Accelerator, objective: nn.Module, teacher: nn.Module, data: Dataset,
                         config: FinetuneConfig) -> Dict[str, float]:
    """Top-1 (labelled images) and top-1 agreement with the teacher, gathered over all processes."""
    student = accelerator.unwrap_model(objective).student.eval()
    loader = accelerator.prepare(DataLoader(data, batch_size=config.batch_size, num_workers=config.num_workers))
    tally = Tally()
    for images, labels in loader:
        logits, teacher_pred = student(images), teacher(images).argmax(1)
        logits, teacher_pred, labels = accelerator.gather_for_metrics((logits, teacher_pred, labels))
        tally.add(logits, labels, teacher_pred)
    return {**tally.result(top5=False), 'images': tally.images}
