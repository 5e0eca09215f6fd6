"""synth.load_images: local folders, save_to_disk datasets, the Hub while offline, single-image crops."""
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import make_image_folder
from synth import HubUnreachableError, SingleImageCrops, load_images

RES = 32
DATA_CONFIG = {'input_size': (3, RES, RES), 'interpolation': 'bilinear', 'mean': (0.5, 0.5, 0.5),
               'std': (0.5, 0.5, 0.5), 'crop_pct': 1.0, 'crop_mode': 'center'}


def random_image(size=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


@pytest.fixture
def photo(tmp_path):
    """A large 'natural' photo: smooth gradients plus noise, so crops differ visibly."""
    y, x = np.mgrid[0:256, 0:320]
    arr = np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.float32)
    arr += np.random.default_rng(0).normal(0, 20, arr.shape)
    path = tmp_path / 'photo.jpg'
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(path)
    return str(path)


# --- local folders ----------------------------------------------------------------------------------

def test_nested_folder_has_labels_and_teacher_transform(tmp_path):
    root = make_image_folder(str(tmp_path / 'nested'), classes=('cat', 'dog'), per_class=3)
    ds = load_images(root, DATA_CONFIG)
    assert len(ds) == 6 and sorted({label for _, label in ds}) == [0, 1]
    image, _ = ds[0]
    assert image.shape == (3, RES, RES) and image.min() >= -1 - 1e-6 and image.max() <= 1 + 1e-6


def test_flat_folder_is_unlabeled(tmp_path):
    root = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=4)
    ds = load_images(root, DATA_CONFIG)
    assert len(ds) == 4 and {label for _, label in ds} == {-1}


def test_corrupt_and_non_image_files_are_skipped_and_counted(tmp_path, caplog):
    root = make_image_folder(str(tmp_path / 'mixed'), classes=('a',), per_class=3)
    with open(os.path.join(root, 'a', 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG not really')
    with open(os.path.join(root, 'a', 'notes.txt'), 'w') as f:
        f.write('not an image')
    ds = load_images(root, DATA_CONFIG)
    assert len(ds) == 3 and ds.skipped == 1
    assert 'Skipped 1 unreadable' in caplog.text
    assert all(x.shape == (3, RES, RES) for x, _ in ds)


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ValueError, match='No readable image'):
        load_images(str(tmp_path / 'empty'), DATA_CONFIG)


def test_subsampling_is_deterministic_by_seed(tmp_path):
    root = make_image_folder(str(tmp_path / 'many'), classes=('a', 'b'), per_class=10, size=16)
    pick = [load_images(root, DATA_CONFIG, num_images=5, seed=s).samples for s in (0, 0, 1)]
    assert len(pick[0]) == 5 and pick[0] == pick[1] and pick[0] != pick[2]


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        load_images(str(tmp_path / 'nope'), DATA_CONFIG)
    with pytest.raises(ValueError, match='not an image'):
        (tmp_path / 'x.csv').write_text('a,b')
        load_images(str(tmp_path / 'x.csv'), DATA_CONFIG)


# --- Hugging Face datasets --------------------------------------------------------------------------

def _hf_dataset(n=6, broken=()):
    import datasets
    images = []
    for i in range(n):
        buf = io.BytesIO()
        random_image(40, seed=i).save(buf, format='PNG')
        images.append({'bytes': b'garbage' if i in broken else buf.getvalue(), 'path': None})
    features = datasets.Features({'img': datasets.Image(), 'fine_label': datasets.ClassLabel(num_classes=3)})
    return datasets.Dataset.from_dict({'img': images, 'fine_label': [i % 3 for i in range(n)]}, features=features)


def test_save_to_disk_dataset_with_a_corrupt_entry(tmp_path):
    path = str(tmp_path / 'saved')
    _hf_dataset(6, broken=(2,)).save_to_disk(path)
    ds = load_images(path, DATA_CONFIG)  # image and label columns found from the features
    assert len(ds) == 5 and ds.skipped == 1
    assert [label for _, label in ds] == [0, 1, 0, 1, 2]
    assert ds[0][0].shape == (3, RES, RES)
    sub = [load_images(path, DATA_CONFIG, num_images=3, seed=s).indices for s in (0, 0)]
    assert len(sub[0]) <= 3 and sub[0] == sub[1]


def test_save_to_disk_dataset_dict_picks_the_split(tmp_path):
    import datasets
    path = str(tmp_path / 'saved_dict')
    datasets.DatasetDict({'train': _hf_dataset(4), 'test': _hf_dataset(2)}).save_to_disk(path)
    assert len(load_images(path, DATA_CONFIG)) == 4
    assert len(load_images(path, DATA_CONFIG, split='test')) == 2
    with pytest.raises(ValueError, match="no split 'val'"):
        load_images(path, DATA_CONFIG, split='val')


@pytest.mark.parametrize('source', ['hf:someone/no-such-dataset:train', 'someone/no-such-dataset'])
def test_hub_name_while_offline_is_a_clear_error(monkeypatch, source):
    import datasets
    import huggingface_hub.constants
    # The libraries read HF_HUB_OFFLINE when imported; this process imported them already, so the test sets
    # their switches too (a user sets the variable before starting Python).
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    monkeypatch.setattr(datasets.config, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(HubUnreachableError) as info:
        load_images(source, DATA_CONFIG)
    message = str(info.value)
    assert "'someone/no-such-dataset'" in message and 'unreachable' in message and 'save_to_disk' in message
    assert isinstance(info.value, ValueError)  # CLIs report it as a bad argument


# --- single-image crops -----------------------------------------------------------------------------

def test_single_image_crops_are_deterministic_by_seed(photo):
    a = SingleImageCrops([photo], 8, DATA_CONFIG, seed=0)
    b = SingleImageCrops([photo], 8, DATA_CONFIG, seed=0)
    c = SingleImageCrops([photo], 8, DATA_CONFIG, seed=1)
    assert len(a) == 8 and a[0][1] == -1 and a[0][0].shape == (3, RES, RES)
    torch.manual_seed(123)  # the global generator must not matter
    first = a[3][0]
    torch.manual_seed(456)
    torch.testing.assert_close(first, b[3][0])
    assert not torch.equal(a[3][0], a[4][0]) and not torch.equal(a[3][0], c[3][0])
    with pytest.raises(IndexError):
        a[8]


def test_crops_sources_from_load_images(photo, tmp_path):
    other = tmp_path / 'other.png'
    random_image(128, seed=5).save(other)
    broken = tmp_path / 'broken.jpg'
    broken.write_bytes(b'not a jpeg')
    ds = load_images(f'crops:{photo},{other},{broken}', DATA_CONFIG, num_images=5, seed=2)
    assert isinstance(ds, SingleImageCrops) and len(ds) == 5 and len(ds.images) == 2 and ds.skipped == 1
    single = load_images(photo, DATA_CONFIG, num_images=3)
    assert isinstance(single, SingleImageCrops) and len(single) == 3
    with pytest.raises(ValueError, match='could be decoded'):
        load_images(f'crops:{broken}', DATA_CONFIG)
    with pytest.raises(FileNotFoundError):
        load_images(f'crops:{tmp_path / "missing.jpg"}', DATA_CONFIG)
