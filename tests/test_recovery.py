"""The per-run recovery choice (issue 31): the dropped student and the finetuned one at several mixes, the one
closest to the teacher on images finetuning never saw kept, a finetuned one only above the z floor."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from practise_df import load_compressed
from practise_df.cli.compress import add_compress_arguments, config_from_args, render_report
from practise_df.config import CompressConfig, EvalConfig
from practise_df.pipeline import compress
from practise_df.recovery import MIN_Z, MIXES, choose, choose_student, signal_images, split_pool, student_at
from synth import SingleImageCrops

from conftest import make_image_folder

DATA_CONFIG = {'input_size': (3, 32, 32), 'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25),
               'interpolation': 'bilinear', 'crop_pct': 1.0}


def per_image(kl, seed=0, n=256, noise=0.2):
    """Per-image signals around a mean KL, with image-to-image spread (as real images have)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(n, generator=g) * noise
    return {'kl': (kl + spread).clamp_min(0), 'agreement': torch.full((n,), 50.0) - 100 * spread,
            'feature_mse': (kl / 2 + spread).clamp_min(0)}


def shifted(values, by):
    """``values`` moved ``by`` closer to the teacher in every signal."""
    return {k: v - by * (1 if k != 'agreement' else -100) for k, v in values.items()}


def test_choose_keeps_a_candidate_only_when_clearly_closer():
    dropped = per_image(1.0)
    for signal in ('agreement', 'kl', 'feature_mse'):
        assert choose({'dropped': dropped, 'finetuned': shifted(dropped, 0.2)}, signal)[0] == 'finetuned'
        kept, why, _ = choose({'dropped': dropped, 'finetuned': shifted(dropped, -0.2)}, signal)
        assert kept == 'dropped' and signal in why and 'paired z' in why
    assert choose({'dropped': dropped, 'finetuned': dropped})[0] == 'dropped', 'a tie keeps the dropped student'
    # closer on average by less than the images' noise: not trusted (the 15% default_photos case of BENCHMARKS.md)
    noisy = per_image(0.99, seed=1)
    assert noisy['kl'].mean() < dropped['kl'].mean()
    kept, why, _ = choose({'dropped': dropped, 'finetuned': noisy}, min_z=2)
    assert kept == 'dropped' and 'by more than 2 SE' in why and '2 needed' in why
    # compress's default floor, MIN_Z = 0 (issue 31: the same students kept on both tracks, more pairs right)
    assert MIN_Z == 0 and choose({'dropped': dropped, 'finetuned': noisy})[0] == 'finetuned'
    with pytest.raises(ValueError, match="Unknown signal 'loss'"):
        choose({'dropped': dropped, 'finetuned': dropped}, 'loss')


def test_choose_keeps_the_closest_of_the_candidates_clearly_closer():
    dropped = per_image(1.0)
    noise = torch.randn(256, generator=torch.Generator().manual_seed(2)) * 8
    students = {'dropped': dropped, 'mix0.1': shifted(dropped, 0.05), 'mix0.5': shifted(dropped, 0.3),
                'mix1': {**shifted(dropped, 0.6), 'kl': dropped['kl'] - 0.6 + noise - noise.mean()}}
    kept, why, stats = choose(students, min_z=2)
    assert set(stats) == {'mix0.1', 'mix0.5', 'mix1'}
    # mix1 has the largest mean gain but is noisy, so it is not trusted; mix0.5 is the closest of the rest
    assert stats['mix1'][0] > stats['mix0.5'][0] and stats['mix1'][2] < 2 < stats['mix0.5'][2]
    assert kept == 'mix0.5' and 'closest of the 2' in why
    assert choose(students)[0] == 'mix1', 'with no floor, the largest mean gain'


def _photos(root, n, size=80):
    rng = np.random.default_rng(0)
    os.makedirs(root, exist_ok=True)
    paths = [os.path.join(root, f'photo{i}.png') for i in range(n)]
    for p in paths:
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(p)
    return paths


@pytest.mark.parametrize('cutmix', [0.0, 0.5])
def test_crops_are_held_out_by_whole_photos(tmp_path, cutmix):
    photos = _photos(str(tmp_path), 6)
    pool = SingleImageCrops(photos, 60, DATA_CONFIG, seed=0, cutmix=cutmix)
    train, held = split_pool(pool, 12, seed=0)
    photos_of = (lambda i: {i % 6, (i + 1) % 6}) if cutmix else (lambda i: {i % 6})
    held_photos = set().union(*(photos_of(i) for i in held))
    assert 0 < len(held_photos) < 6 and held and train and not set(train) & set(held)
    assert not any(photos_of(i) & held_photos for i in train), 'no training crop shows a held-out photo'
    if not cutmix:
        assert len(held) == min(12, 10 * len(held_photos)), 'up to 12 crops of the held-out photos'
        assert len(train) == 60 - 10 * len(held_photos), 'no crop of a held-out photo is trained on'
    assert split_pool(pool, 12, seed=0) == (train, held) and split_pool(pool, 12, seed=1) != (train, held)


def test_other_pools_are_split_image_by_image(tmp_path):
    one_photo = SingleImageCrops(_photos(str(tmp_path), 1), 20, DATA_CONFIG, seed=0)
    train, held = split_pool(one_photo, 5, seed=3)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()
    assert (train, held) == (sorted(perm[5:]), sorted(perm[:5]))  # the split compress always made
    # one photo cannot be held out whole: the signal falls back to the sample photos, and says so
    images, what = signal_images('pool', DATA_CONFIG, one_photo, held)
    assert len(images) == 256 and 'sample photos' in what and 'one photo' in what
    images, what = signal_images('pool', DATA_CONFIG, torch.utils.data.TensorDataset(torch.randn(8, 3, 32, 32),
                                                                                     torch.zeros(8)), [1, 5])
    assert images.shape == (2, 3, 32, 32) and what.startswith('2 images of the pool')
    with pytest.raises(ValueError, match='--guard-images PHOTOS'):
        signal_images('guard-images', DATA_CONFIG)


def _config(out, images, **eval_):
    return CompressConfig(model='timm:test_resnet', output_dir=str(out), input_size=32,
                          images={'source': images, 'num_images': 16, 'heldout': 4},
                          scoring={'blocks': ['layer1.0']}, latency={'batch_size': 2, 'repeats': 2},
                          eval={'data': eval_.pop('data', None), **eval_},
                          finetune={'steps': 3, 'batch_size': 4, 'lr': 0.05})


def _distance_signal(monkeypatch, out, sign):
    """A fake closeness: per-image KL that falls (sign +1) or rises (sign -1) with how far a student moved from
    the dropped one, so the fully finetuned student is clearly closest (or clearly furthest). Records the
    images it is measured on."""
    seen = []

    def closeness(student, teacher, images, batch_size=64):
        dropped = load_compressed(str(out / 'dropped')).state_dict()
        moved = sum((v.float() - dropped[k].float()).pow(2).sum() for k, v in student.state_dict().items()
                    if v.is_floating_point()).sqrt().item()
        seen.append(images)
        kl = torch.linspace(1, 2, len(images)) - sign * moved
        return {'kl': kl, 'agreement': torch.full((len(images),), 50.0), 'feature_mse': kl}
    monkeypatch.setattr('practise_df.recovery.closeness', closeness)
    return seen


def _record_finetuning(monkeypatch):
    """The indices of the pool finetuning trains on."""
    trained = []
    import practise_df.pipeline as pipeline
    real = pipeline.finetune

    def finetune(student, teacher, data, *args, **kwargs):
        trained.append(list(data.indices))
        return real(student, teacher, data, *args, **kwargs)
    monkeypatch.setattr(pipeline, 'finetune', finetune)
    return trained


@pytest.mark.parametrize('sign, kept', [(+1, 'mix1'), (-1, 'dropped')])
def test_compress_lists_every_candidate_and_keeps_the_one_the_signal_prefers(tmp_path, monkeypatch, sign, kept):
    images = make_image_folder(str(tmp_path / 'images'), classes=('0', '1', '2'), per_class=6)
    out = tmp_path / 'run'
    seen = _distance_signal(monkeypatch, out, sign)
    trained = _record_finetuning(monkeypatch)
    signal_sets = []
    import practise_df.pipeline as pipeline
    real_signal_images = pipeline.signal_images
    monkeypatch.setattr(pipeline, 'signal_images',
                        lambda *a, **kw: signal_sets.append(list(a[3])) or real_signal_images(*a, **kw))
    report = compress(_config(out, images, data=images, recovery_images='pool'), progress=False)

    choice = report['recovery']
    assert [c['name'] for c in choice['candidates']] == ['dropped'] + [f'mix{m:g}' for m in MIXES]
    assert choice['kept'] == kept and choice['mix'] == (1.0 if kept == 'mix1' else 0.0)
    assert report['finetune']['mix'] == choice['mix'], 'the report says which share of the update ships'
    for c in choice['candidates']:
        assert {'name', 'mix', 'lr', 'closeness', 'gain', 'gain_se', 'z', 'top1'} <= set(c)
        assert c['top1'] is not None and c['lr'] == (None if c['name'] == 'dropped' else 0.05)
        assert (c['gain'] > 0) is (sign > 0 and c['mix'] > 0)
    assert json.load(open(out / 'report.json'))['recovery'] == choice
    # the signal images: the 4 held-out pool images, which finetuning never saw
    assert len(signal_sets) == 1 and len(signal_sets[0]) == 4 and choice['num_images'] == 4
    assert len(trained) == 1 and len(trained[0]) == 12 and not set(trained[0]) & set(signal_sets[0])
    assert all(len(s) == 4 for s in seen) and 'held out from finetuning' in choice['image_source']
    # the older report keys still say what was kept
    assert report['guard']['kept'] == ('finetuned' if kept == 'mix1' else 'dropped')
    assert report['eval']['student']['top1'] == choice['candidates'][[c['name'] for c in choice['candidates']]
                                                                      .index(kept)]['top1']
    model = load_compressed(str(out / 'model')).state_dict()
    recovered = load_compressed(str(out / 'dropped')).state_dict()
    assert all(torch.equal(v, recovered[k]) for k, v in model.items()) is (kept == 'dropped')
    assert os.path.isdir(out / 'rejected') is (kept != 'mix1'), 'the whole finetuned student, when not kept'
    assert (choice.get('finetuned_model') == str(out / 'rejected')) is (kept != 'mix1')
    text = render_report(report)
    assert f'kept {kept}' in text and f'* {kept}' in text and all(f"\n  {c['name']} " in text
                                                                 for c in choice['candidates'] if c['name'] != kept)
    card = open(out / 'model' / 'README.md').read()
    assert '## Which student ships' in card and choice['reason'] in card
    if kept == 'dropped':  # resumed, the signal now prefers the finetuned student: nothing stale is left aside
        os.remove(out / 'report.json')
        _distance_signal(monkeypatch, out, +1)
        again = _config(out, images, data=images, recovery_images='pool')
        assert compress(again, resume=True, progress=False)['recovery']['kept'] == 'mix1'
        assert not os.path.exists(out / 'rejected') and 'finetuned' not in json.load(open(out / 'report.json'))['eval']


def test_crops_signal_is_whole_photos_finetuning_never_saw(tmp_path, monkeypatch):
    photos = _photos(str(tmp_path / 'photos'), 4)
    out = tmp_path / 'run'
    trained = _record_finetuning(monkeypatch)
    seen = _distance_signal(monkeypatch, out, +1)
    config = _config(out, 'crops:' + ','.join(photos), recovery_images='pool')
    report = compress(config, progress=False)
    _, held = split_pool(SingleImageCrops(photos, 16, DATA_CONFIG, seed=0), 4, seed=0)
    held_photos = {i % 4 for i in held}
    assert len(seen[0]) == len(held) == 4 and 'crops of held-out photos' in report['recovery']['image_source']
    assert trained[0] and not {i % 4 for i in trained[0]} & held_photos


def test_the_photos_signal_measures_as_many_crops_as_asked(tmp_path, monkeypatch):
    """The default signal images, the sample photos: --recovery-crops N of them, never the pool."""
    images = make_image_folder(str(tmp_path / 'images'), classes=('0', '1'), per_class=8)
    out = tmp_path / 'run'
    seen = _distance_signal(monkeypatch, out, +1)
    report = compress(_config(out, images, recovery_crops=8), progress=False)
    choice = report.recovery
    assert choice['num_images'] == 8 and choice['image_source'] == '8 crops of the sample photos'
    assert all(len(s) == 8 for s in seen) and choice['kept'] == 'mix1'


def test_one_mix_and_no_guard(tmp_path):
    """--finetune-mix X: only that candidate besides the dropped one. --no-guard: the finetuned student at
    --finetune-mix, no choice; decided again on --resume without retraining."""
    images = make_image_folder(str(tmp_path / 'images'), classes=('0', '1'), per_class=8)
    out = tmp_path / 'run'
    config = _config(out, images)
    config.finetune.mix = 0.5
    report = compress(config, progress=False)
    assert [c['name'] for c in report['recovery']['candidates']] == ['dropped', 'mix0.5']
    whole = load_compressed(str(out / 'rejected'))  # the whole update, set aside as mix1 is no candidate
    stamp = _newest(out / 'checkpoints')

    os.remove(out / 'report.json')  # so the report stage runs again, with other settings
    config = _config(out, images, guard=False)
    config.finetune.mix = 0.5
    report = compress(config, resume=True, progress=False)
    assert 'recovery' not in report and 'guard' not in report and report['finetune']['mix'] == 0.5
    assert _newest(out / 'checkpoints') == stamp, 'finished finetuning is not redone'
    expected = student_at(load_compressed(str(out / 'dropped')), whole, 0.5).state_dict()
    model = load_compressed(str(out / 'model')).state_dict()
    assert all(torch.allclose(v, expected[k], atol=1e-6) for k, v in model.items())
    assert not all(torch.equal(v, whole.state_dict()[k]) for k, v in model.items())


def _newest(folder):
    return max(os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def test_resume_after_finetuning_makes_the_same_choice(tmp_path):
    images = make_image_folder(str(tmp_path / 'images'), classes=('0', '1'), per_class=8)
    out = tmp_path / 'run'
    first = compress(_config(out, images), progress=False)['recovery']
    os.remove(out / 'report.json')  # stopped after finetuning
    again = compress(_config(out, images), resume=True, progress=False)['recovery']
    assert again == first
    os.remove(out / 'report.json')
    fewer = compress(_config(out, images, finetune_mixes=[0.25]), resume=True, progress=False)['recovery']
    assert [c['name'] for c in fewer['candidates']] == ['dropped', 'mix0.25']
    assert fewer['candidates'][1]['closeness'] == first['candidates'][2]['closeness'], 'the same mix, measured alike'


def test_settings_errors_and_flags(tmp_path):
    photo = _photos(str(tmp_path), 1)[0]
    assert EvalConfig().signal_images == 'photos' and EvalConfig(guard_images=[photo]).signal_images == 'guard-images'
    with pytest.raises(ValueError, match='pass them with --guard-images'):
        EvalConfig(recovery_images='guard-images')
    with pytest.raises(ValueError, match='does not read --guard-images'):
        EvalConfig(recovery_images='pool', guard_images=[photo])
    with pytest.raises(ValueError, match=r'in \(0, 1\]'):
        EvalConfig(finetune_mixes=[0.5, 0])
    with pytest.raises(ValueError, match='--no-guard keeps'):
        EvalConfig(guard=False, finetune_mixes=[0.5])
    with pytest.raises(ValueError, match='not both'):
        CompressConfig(model='timm:test_resnet', output_dir='x', scoring={'drop': 1}, finetune={'mix': 0.5},
                       eval={'finetune_mixes': [0.5, 1]})
    import argparse
    parser = add_compress_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))
    args = parser.parse_args(['--model', 'timm:test_resnet', '--output-dir', 'x', '--drop', '1',
                              '--finetune-mixes', '0.25,1', '--recovery-images', 'photos'])
    config = config_from_args(args)
    assert config.eval.finetune_mixes == [0.25, 1.0] and config.eval.signal_images == 'photos'
    with pytest.raises(SystemExit):
        parser.parse_args(['--finetune-mixes', '0.5,2'])


@pytest.mark.parametrize('mixes', [[0.5, 0.0], [-0.5], [1.5], []])
def test_mixes_outside_zero_one_get_the_same_error_everywhere(mixes, capsys):
    """One rule (config.check_mixes) behind the flag, the config and the Python API."""
    import argparse
    message = r'each is a fraction of the finetuning update kept, in \(0, 1\]'
    with pytest.raises(ValueError, match='finetune_mixes \\(--finetune-mixes\\): ' + message):
        EvalConfig(finetune_mixes=mixes)
    with pytest.raises(ValueError, match=message):
        choose_student(None, None, None, None, mixes=mixes)  # checked before anything is measured
    parser = add_compress_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))
    with pytest.raises(SystemExit):
        parser.parse_args(['--finetune-mixes', ','.join(map(str, mixes)) or ','])
    assert 'each is a fraction of the finetuning update kept' in capsys.readouterr().err
