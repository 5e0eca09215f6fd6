"""The guard: a label-free comparison of the finetuned and the dropped student with the teacher, on
photos neither was trained on; compress keeps the closer one and lists both."""
import json
import os

import pytest
import torch

from practise_df import drop_blocks, load_compressed
from practise_df.cli.compress import render_report
from practise_df.pipeline import compress
from practise_df.config import CompressConfig
from practise_df.guard import choose, closeness, compare
from synth.ood import SAMPLE_PHOTOS, photo_crops

from conftest import make_image_folder

CONFIG = {'input_size': (3, 32, 32), 'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
          'interpolation': 'bilinear', 'crop_pct': 1.0}


def test_default_guard_images_are_the_sample_photos_offline():
    images = photo_crops(CONFIG, num_images=12, seed=0)
    assert images.shape == (12, 3, 32, 32) and len(SAMPLE_PHOTOS) == 4
    assert torch.equal(images, photo_crops(CONFIG, num_images=12, seed=0))
    assert not torch.equal(images, photo_crops(CONFIG, num_images=12, seed=1))


def test_compare_is_zero_distance_for_the_teacher_itself(tiny_resnet):
    images = photo_crops(CONFIG, num_images=8)
    same = compare(tiny_resnet, tiny_resnet, images)
    assert same['agreement'] == 100.0 and same['kl'] == pytest.approx(0, abs=1e-6) and same['feature_mse'] == 0
    dropped = compare(drop_blocks(tiny_resnet, ['layer1.1', 'layer2.1']), tiny_resnet, images)
    assert dropped['kl'] > 0 and dropped['feature_mse'] > 0


def test_closeness_is_per_image_and_compare_its_mean(tiny_resnet):
    images = photo_crops(CONFIG, num_images=8)
    dropped = drop_blocks(tiny_resnet, ['layer1.1'])
    per_image, means = closeness(dropped, tiny_resnet, images, batch_size=3), compare(dropped, tiny_resnet, images)
    assert all(v.shape == (8,) for v in per_image.values())
    assert set(per_image['agreement'].tolist()) <= {0.0, 100.0}
    assert means == pytest.approx({k: v.mean().item() for k, v in per_image.items()})


def per_crop(kl, seed=0, n=256, noise=0.2):
    """Per-crop signals around a mean KL, with crop-to-crop spread (as real crops have)."""
    g = torch.Generator().manual_seed(seed)
    spread = torch.randn(n, generator=g) * noise
    return {'kl': (kl + spread).clamp_min(0), 'agreement': torch.full((n,), 50.0) - 100 * spread,
            'feature_mse': (kl / 2 + spread).clamp_min(0)}


def test_choose_keeps_the_finetuned_student_only_when_clearly_closer():
    dropped = per_crop(1.0)
    for signal in ('agreement', 'kl', 'feature_mse'):
        better = {k: v - 0.2 * (1 if k != 'agreement' else -100) for k, v in dropped.items()}
        worse = {k: v + 0.2 * (1 if k != 'agreement' else -100) for k, v in dropped.items()}
        assert choose(dropped, better, signal)[0] == 'finetuned'
        kept, why = choose(dropped, worse, signal)
        assert kept == 'dropped' and signal in why and 'paired z' in why
    assert choose(dropped, dropped)[0] == 'dropped', 'a tie keeps the dropped student'
    # closer on average by less than the crops' noise: not trusted (the 15% default_photos case of BENCHMARKS.md)
    noisy = per_crop(0.99, seed=1)
    assert noisy['kl'].mean() < dropped['kl'].mean()
    kept, why = choose(dropped, noisy)
    assert kept == 'dropped' and 'not clearly closer' in why
    assert choose(dropped, noisy, min_z=-10)[0] == 'finetuned'
    with pytest.raises(ValueError, match='Unknown guard signal'):
        choose(dropped, dropped, 'loss')


@pytest.mark.parametrize('verdict', ['dropped', 'finetuned'])
def test_compress_keeps_what_the_guard_chose_and_lists_both(tmp_path, monkeypatch, verdict):
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b', 'c'), per_class=4)
    monkeypatch.setattr('practise_df.pipeline.choose', lambda d, f, s: (verdict, f'forced to {verdict}'))
    out = tmp_path / 'run'
    config = CompressConfig(model='timm:resnet18', output_dir=str(out), input_size=32,
                            images={'source': images, 'num_images': 12, 'heldout': 4},
                            scoring={'drop': 1, 'num_images': 8, 'adaptor_steps': 10},
                            latency={'batch_size': 2, 'repeats': 2},
                            eval={'data': images}, finetune={'steps': 2, 'batch_size': 4})
    report = compress(config, progress=False)
    guard = report['guard']
    assert guard['kept'] == verdict and {'dropped', 'finetuned'} <= set(guard) and guard['crops'] == 256
    kept = load_compressed(str(out / 'model')).state_dict()
    recovered = load_compressed(str(out / 'dropped')).state_dict()
    same_as_dropped = all(torch.equal(v, recovered[k]) for k, v in kept.items())
    assert same_as_dropped is (verdict == 'dropped')
    assert os.path.isdir(out / 'rejected') is (verdict == 'dropped'), 'a rejected student is kept aside'
    assert ('finetuned' in report['eval']) is (verdict == 'dropped') and 'before_finetune' in report['eval']
    assert json.load(open(out / 'report.json'))['guard']['kept'] == verdict
    text = render_report(report)  # what the command prints: both students, and the guard's choice
    assert f'guard: kept the {verdict} student: forced to {verdict}' in text and '  before finetuning: top-1' in text
    assert ('  finetuned (rejected by the guard): top-1' in text) is (verdict == 'dropped')
    if verdict == 'dropped':  # resumed with another verdict (e.g. another --finetune-mix): no stale rejected student
        monkeypatch.setattr('practise_df.pipeline.choose', lambda d, f, s: ('finetuned', 'forced'))
        assert compress(config, resume=True, progress=False)['guard']['kept'] == 'finetuned'
        assert not os.path.exists(out / 'rejected') and 'finetuned' not in json.load(open(out / 'report.json'))['eval']
