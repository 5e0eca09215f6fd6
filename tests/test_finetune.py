import os
from dataclasses import replace

import pytest
import torch
from accelerate.state import AcceleratorState, GradientState
from torch.utils.data import TensorDataset

from practise_df import create_model, drop_blocks
from practise_df.finetune import (FinetuneConfig, finetune, interpolate_weights, latest_checkpoint,
                                  make_accelerator)

from conftest import accelerate_launch, launch_log, randomize_norms

HERE = os.path.dirname(__file__)
SCRIPT = os.path.join(HERE, 'scripts', 'finetune_tiny.py')


@pytest.fixture
def pair():
    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:resnet18', num_classes=5))
    return teacher, drop_blocks(teacher, ['layer2.1', 'layer3.1'])


def _data(n=16, labels=True):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (n,), generator=gen) if labels else torch.full((n,), -1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=gen), y)


def _run(student, teacher, data, tmp_path=None, eval_data=None, resume=False, **kw):
    config = FinetuneConfig(batch_size=8, lr=0.01, **kw)
    acc = make_accelerator(str(tmp_path) if tmp_path else None, config, cpu=True)
    return finetune(student, teacher, data, config, accelerator=acc, eval_data=eval_data,
                    output_dir=str(tmp_path) if tmp_path else None, resume=resume, progress=False)


def test_mir_lowers_the_loss_keeps_classifier_and_teacher(pair):
    teacher, student = pair
    head = student.fc.weight.clone()
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    history = _run(student, teacher, _data(), steps=12, freeze_bn=True)
    assert len(history['loss']) == 12
    assert sum(history['loss'][-3:]) < 0.8 * sum(history['loss'][:3])
    assert torch.equal(student.fc.weight, head), 'MiR freezes the classifier'
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items()), 'teacher untouched'


def test_freeze_bn_holds_through_evaluation_inside_an_epoch(pair):
    """freeze_bn keeps every BatchNorm's running statistics as they were, also after an evaluation
    in the middle of an epoch (which puts the model in eval mode and back)."""
    teacher, student = pair
    stats = {k: v.clone() for k, v in student.state_dict().items() if 'running_' in k}
    history = _run(student, teacher, _data(32), steps=4, freeze_bn=True, eval_every=1, eval_data=_data(8))
    assert len(history['eval']) == 4  # 4 steps in one epoch of 32 images, batch 8
    assert all(torch.equal(student.state_dict()[k], v) for k, v in stats.items())


def test_ce_trains_the_whole_model(pair):
    teacher, student = pair
    head = student.fc.weight.clone()
    history = _run(student, teacher, _data(), steps=4, loss='ce')
    assert len(history['loss']) == 4 and all(v >= 0 for v in history['loss'])
    assert not torch.equal(student.fc.weight, head)


@pytest.mark.parametrize('loss', ['kd', 'mir+kd'])
def test_distillation_keeps_the_classifier(pair, loss):
    """KD and MiR+KD train the backbone only: the classifier stays as the teacher left it."""
    teacher, student = pair
    head, stem = student.fc.weight.clone(), student.conv1.weight.clone()
    history = _run(student, teacher, _data(), steps=4, loss=loss)
    assert len(history['loss']) == 4 and all(v >= 0 for v in history['loss'])
    assert torch.equal(student.fc.weight, head) and not torch.equal(student.conv1.weight, stem)


def test_ce_without_labels_is_a_clear_error(pair):
    teacher, student = pair
    with pytest.raises(ValueError, match="'ce' loss needs labelled images"):
        _run(student, teacher, _data(labels=False), steps=2, loss='ce')


def test_non_finite_loss_stops_with_the_step_and_last_checkpoint(pair, tmp_path):
    teacher, student = pair
    x, y = _data().tensors
    bad = TensorDataset(torch.full_like(x, float('nan')), y)
    with pytest.raises(FloatingPointError, match=r'became nan at step 1\. Last good checkpoint: none'):
        _run(student, teacher, bad, tmp_path, steps=3)


def test_periodic_eval_and_checkpoints(pair, tmp_path):
    teacher, student = pair
    config = FinetuneConfig(batch_size=8, lr=0.01, steps=4, checkpoint_every=2, eval_every=2)
    acc = make_accelerator(str(tmp_path), config, cpu=True)
    history = finetune(student, teacher, _data(), config, accelerator=acc, output_dir=str(tmp_path),
                       eval_data=_data(8), progress=False)
    assert [e['step'] for e in history['eval']] == [2, 4]
    assert all(0 <= e['agreement'] <= 100 and e['images'] == 8 and 'top1' in e for e in history['eval'])
    assert latest_checkpoint(str(tmp_path)).endswith('checkpoint_1')


def test_resume_continues_exactly(pair, tmp_path):
    teacher, student = pair
    reference = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    _run(reference, teacher, _data(), steps=6)

    config = FinetuneConfig(batch_size=8, lr=0.01, steps=6, checkpoint_every=2)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt('simulated crash')

    acc = make_accelerator(str(tmp_path), config, cpu=True)
    with pytest.raises(KeyboardInterrupt):
        finetune(student, teacher, _data(), config, accelerator=acc, output_dir=str(tmp_path), progress=False,
                 on_step=crash)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    resumed = drop_blocks(teacher, ['layer2.1', 'layer3.1'])  # a fresh process starts from scratch
    acc = make_accelerator(str(tmp_path), config, cpu=True)
    history = finetune(resumed, teacher, _data(), config, accelerator=acc, output_dir=str(tmp_path), resume=True,
                       progress=False)
    assert history['step'] == [3, 4, 5, 6]
    for k, v in reference.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k


def test_resume_after_a_crash_inside_the_first_checkpoint(pair, tmp_path):
    """Killed while writing checkpoint_0 (no completion marker): resume starts from step 0 and numbers
    its checkpoints after the broken folder instead of refusing to overwrite it."""
    teacher, _ = pair
    (tmp_path / 'checkpoints' / 'checkpoint_0').mkdir(parents=True)
    (tmp_path / 'checkpoints' / 'checkpoint_0' / 'model.safetensors').write_bytes(b'cut short')
    config = FinetuneConfig(batch_size=8, lr=0.01, steps=2, checkpoint_every=2)
    student = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    history = finetune(student, teacher, _data(), config, accelerator=make_accelerator(str(tmp_path), config, cpu=True),
                       output_dir=str(tmp_path), resume=True, progress=False)
    assert history['step'] == [1, 2]
    assert latest_checkpoint(str(tmp_path)).endswith('checkpoint_1')


def test_resume_discards_a_cut_short_checkpoint_so_the_rotation_keeps_a_complete_one(pair, tmp_path):
    """Complete checkpoint_1 plus a checkpoint_2 cut short by a crash: resume loads checkpoint_1 and
    removes checkpoint_2; otherwise the broken folder would count towards keep_checkpoints and the next
    save would delete checkpoint_1, leaving nothing complete while checkpoint_3 is written."""
    teacher, _ = pair
    config = FinetuneConfig(batch_size=8, lr=0.01, steps=4, checkpoint_every=2, keep_checkpoints=2)
    student = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    run = dict(output_dir=str(tmp_path), progress=False)
    finetune(student, teacher, _data(), replace(config, steps=2),
             accelerator=make_accelerator(str(tmp_path), config, cpu=True), **run)
    root = tmp_path / 'checkpoints'
    assert sorted(os.listdir(root)) == ['checkpoint_0']  # the step-2 (= final) checkpoint
    (root / 'checkpoint_0').rename(root / 'checkpoint_1')
    (root / 'checkpoint_2').mkdir()
    (root / 'checkpoint_2' / 'model.safetensors').write_bytes(b'cut short')
    student = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    history = finetune(student, teacher, _data(), config, accelerator=make_accelerator(str(tmp_path), config, cpu=True),
                       resume=True, **run)
    assert history['step'] == [3, 4]
    assert sorted(os.listdir(root)) == ['checkpoint_1', 'checkpoint_3']
    assert latest_checkpoint(str(tmp_path)).endswith('checkpoint_3')


def _launch(out, procs, batch_size, extra=()):
    proc = accelerate_launch(SCRIPT, ['--out', out, '--batch-size', batch_size, *extra], processes=procs, timeout=600)
    assert proc.returncode == 0, launch_log(proc)
    return torch.load(os.path.join(out, 'final.pt'))


def test_two_processes_match_one(tmp_path):
    """Same global batch (1 x 8 vs 2 x 4), same data order: with BatchNorm statistics frozen the result
    matches to float rounding (tolerance 1e-5 relative). (With train-mode BatchNorm each process
    normalises its own half batch, as in any DDP run without SyncBatchNorm, so results differ more.)"""
    one = _launch(tmp_path / 'one', 1, 8, ['--freeze-bn'])
    two = _launch(tmp_path / 'two', 2, 4, ['--freeze-bn'])
    assert one['history']['loss'] == pytest.approx(two['history']['loss'], rel=1e-5)
    for k, v in one['state_dict'].items():
        w = two['state_dict'][k].float()
        assert (v.float() - w).norm() <= 1e-5 * v.float().norm() + 1e-7, k


def test_seeded_samples_fix_augmentation_by_seed_epoch_and_index():
    """A resumed run re-loads batches the uninterrupted run loaded one step ahead: their random
    augmentation must not depend on the global RNG streams (torch, `random`, NumPy)."""
    import random

    import numpy as np

    from practise_df.finetune import SeededSamples

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.rand(1).item() + random.random() + np.random.rand(), i

    data = SeededSamples(Noisy(), seed=3)
    first = [data[i][0] for i in range(4)]
    torch.manual_seed(123)
    random.seed(5)
    state = random.getstate()
    assert [data[i][0] for i in range(4)] == first
    assert random.getstate() == state, 'the global stream is left as it was'
    data.set_epoch(1)
    assert [data[i][0] for i in range(4)] != first
    assert len(set(first)) == 4


def _kd_data(n=240, scale=3.0):
    gen = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 3, 32, 32, generator=gen) * scale, torch.full((n,), -1))


def test_kd_defaults_stay_finite_where_the_old_recipe_diverged():
    """KD used MiR's learning rate (0.02), a trainable classifier and no clipping, and diverged to NaN. On data
    where that recipe diverges (checked here with a plain loop), KD's defaults (its own learning rate, the
    classifier frozen, gradients clipped) stay finite."""
    import math

    import torch.nn.functional as F

    def pair():
        torch.manual_seed(0)
        teacher = randomize_norms(create_model('timm:resnet18', num_classes=100)).eval()
        return teacher, drop_blocks(teacher, ['layer2.1', 'layer3.1'])

    teacher, old = pair()
    old.train()
    for m in old.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
    opt = torch.optim.SGD(old.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    losses = []
    for x, _ in torch.utils.data.DataLoader(_kd_data(), batch_size=8):
        with torch.no_grad():
            target = teacher(x)
        loss = F.kl_div(F.log_softmax(old(x) / 4, 1), F.softmax(target / 4, 1), reduction='batchmean') * 16
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert not all(math.isfinite(v) for v in losses), 'the old recipe diverges on this data'

    teacher, student = pair()
    config = FinetuneConfig(loss='kd', steps=30, batch_size=8)
    history = finetune(student, teacher, _kd_data(), config, accelerator=make_accelerator(None, config, cpu=True),
                       progress=False)
    assert len(history['loss']) == 30 and all(math.isfinite(v) for v in history['loss'])
    assert all(torch.isfinite(p).all() for p in student.parameters())


def test_mix_keeps_that_fraction_of_the_update(pair):
    """mix=0.5 ends halfway between the dropped weights and the fully finetuned ones, buffers included;
    the last evaluation measures the mixed student."""
    teacher, student = pair
    start = {k: v.clone() for k, v in student.state_dict().items()}
    full = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    _run(full, teacher, _data(), steps=4, freeze_bn=False)
    history = _run(student, teacher, _data(), steps=4, freeze_bn=False, mix=0.5, eval_data=_data(8))
    changed = [k for k, v in full.state_dict().items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert any('running_' in k for k in changed) and any('conv' in k for k in changed)
    for k in changed:
        torch.testing.assert_close(student.state_dict()[k], (start[k] + full.state_dict()[k]) / 2)
    assert torch.equal(student.state_dict()['bn1.num_batches_tracked'], full.state_dict()['bn1.num_batches_tracked'])
    images = _data(8).tensors[0]
    with torch.no_grad():
        agreement = 100 * student.eval()(images).argmax(1).eq(teacher.eval()(images).argmax(1)).float().mean()
    assert history['eval'][-1]['agreement'] == pytest.approx(agreement.item())


def test_a_finished_run_resumed_with_another_mix_needs_no_training(pair, tmp_path):
    teacher, student = pair
    start = {k: v.clone() for k, v in student.state_dict().items()}
    _run(student, teacher, _data(), tmp_path, steps=4)
    finetuned = {k: v.clone() for k, v in student.state_dict().items()}
    again = drop_blocks(teacher, ['layer2.1', 'layer3.1'])
    history = _run(again, teacher, _data(), tmp_path, steps=4, mix=0.25, resume=True)
    assert history['step'] == []
    for k, v in again.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, start[k] + 0.25 * (finetuned[k] - start[k]))


@pytest.mark.parametrize('mix', [0.0, -0.5, 1.5])
def test_mix_outside_zero_one_is_a_clear_error(mix):
    message = r'mix \(--finetune-mix\): each is a fraction of the finetuning update kept, in \(0, 1\]'
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(mix=mix)


def test_interpolate_weights_names_missing_weights(pair):
    teacher, student = pair
    with pytest.raises(KeyError, match='start has no weights for'):
        interpolate_weights(teacher, student.state_dict(), 0.5)  # the teacher has the dropped blocks' weights
