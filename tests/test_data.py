import os

import pytest
import torch

from synth.data import ImageFolderDataset, eval_transform, load_image_tensor, split_tensor, subsample

from conftest import make_image_folder

CFG = {'input_size': (3, 32, 32), 'interpolation': 'bilinear', 'mean': (0.5,) * 3, 'std': (0.5,) * 3,
       'crop_pct': 1.0, 'crop_mode': 'center'}


def test_nested_folder_labels_follow_sorted_class_names(tmp_path):
    root = make_image_folder(str(tmp_path / 'd'), classes=('b', 'a'), per_class=2)
    os.makedirs(tmp_path / 'd' / 'a' / 'deeper')
    make_image_folder(str(tmp_path / 'd' / 'a' / 'deeper'), classes=(), flat=1)
    ds = ImageFolderDataset(root, eval_transform(CFG))
    assert ds.classes == ['a', 'b']
    assert sorted(label for _, label in ds.samples) == [0, 0, 0, 1, 1]
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0


def test_flat_folder_is_unlabeled(tmp_path):
    root = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=3)
    ds = ImageFolderDataset(root)
    assert len(ds) == 3 and {label for _, label in ds.samples} == {-1}


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path):
    root = make_image_folder(str(tmp_path / 'd'), classes=('a',), per_class=3)
    (tmp_path / 'd' / 'a' / 'broken.jpg').write_bytes(b'\xff\xd8\xff garbage')
    (tmp_path / 'd' / 'a' / 'notes.txt').write_text('not an image')
    ds = ImageFolderDataset(root)
    assert len(ds) == 3 and ds.skipped == 1


def test_empty_and_missing_folders_are_clear_errors(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No readable image'):
        ImageFolderDataset(str(tmp_path / 'empty'))
    root = tmp_path / 'only_bad'
    root.mkdir()
    (root / 'x.png').write_bytes(b'nope')
    with pytest.raises(ValueError, match='1 file\\(s\\) could not be decoded'):
        ImageFolderDataset(str(root))
    with pytest.raises(FileNotFoundError, match='does not exist'):
        ImageFolderDataset(str(tmp_path / 'missing'))


def test_subsample_and_split_are_deterministic(tmp_path):
    items = list(range(100))
    assert subsample(items, 10, seed=1) == subsample(items, 10, seed=1) != subsample(items, 10, seed=2)
    root = make_image_folder(str(tmp_path / 'd'), classes=('a', 'b'), per_class=5)
    x, y = load_image_tensor(root, CFG, max_images=6, seed=3)
    assert x.shape == (6, 3, 32, 32) and len(y) == 6
    a1, b1 = split_tensor(x, 4, seed=0)
    a2, _ = split_tensor(x, 4, seed=0)
    assert torch.equal(a1, a2) and len(b1) == 2
    with pytest.raises(ValueError, match='at least one image on each side'):
        split_tensor(x, 6)
