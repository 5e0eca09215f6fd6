"""The guard's measures: crops of photos, and how close a student is to the teacher on them, image by image
(the choice compress makes from them is tested in test_recovery.py)."""
import pytest
import torch

from practise_df import drop_blocks
from practise_df.guard import closeness, compare
from synth.ood import SAMPLE_PHOTOS, photo_crops

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
