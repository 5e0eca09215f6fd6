"""synth.data: image folders, decoding (a truncated JPEG, a 16-bit PNG), crops of photos and --data that
names a file."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import MODEL, TINY, cli, make_image_folder
from practise_df import CompressConfig, create_model, resolve_data_config
from practise_df.cli.compress import render_report
from practise_df.pipeline import check_inputs
from synth.data import ImageFolderDataset, decode_image, eval_transform, load_image_tensor, split_tensor, subsample

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


@pytest.fixture(scope='module')
def with_truncated_jpeg(tmp_path_factory):
    root = make_image_folder(str(tmp_path_factory.mktemp('data') / 'images'), classes=('0', '1'), per_class=3,
                             size=40)
    path = os.path.join(root, '0', 'cut.jpg')
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    data = open(path, 'rb').read()
    open(path, 'wb').write(data[:len(data) // 2])
    Image.open(path).verify()  # passes: only decoding the pixels finds the damage
    return root


# Issue 15: input the docs say is handled never crashes.
def test_a_truncated_jpeg_is_skipped_and_counted_everywhere(capsys, tmp_path, with_truncated_jpeg):
    data = with_truncated_jpeg
    code, out, _ = cli(capsys, 'eval', *MODEL, '--data', data, '--repeats', 1, '--json')
    assert code == 0 and json.loads(out)['skipped_files'] == 1 and json.loads(out)['images'] == 6
    code, out, _ = cli(capsys, 'robustness', *MODEL, '--data', data, '--corruptions', 'fog', '--severities', 1,
                       '--json')
    assert code == 0 and json.loads(out)['skipped_files'] == 1
    code, out, _ = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--images', data, '--num-images', 6,
                       '--eval-data', data, '--output-dir', tmp_path / 'run', '--json')
    report = json.loads(out)
    assert code == 0 and report['skipped_files'] == 1 and report['eval']['skipped_files'] == 1
    assert f'1 file(s) of {data} did not decode' in render_report(report)


# Issue 15: input the docs say is handled never crashes.
def test_a_16_bit_png_loads_with_its_scale(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    os.makedirs(tmp_path / 'folder' / 'a')
    path = str(tmp_path / 'folder' / 'a' / 'ramp.png')
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == 'I;16'
    for image in (decode_image(path), ImageFolderDataset(str(tmp_path / 'folder'))[0][0]):
        pixels = np.asarray(image)
        assert pixels.dtype == np.uint8 and abs(pixels.mean() - 127.5) < 1 and (pixels == 255).mean() < 0.01


# Issue 15: every argument is checked before the long work starts.
def test_crops_make_as_many_images_as_asked(images, tmp_path):
    config = CompressConfig(model='timm:resnet18', output_dir=str(tmp_path / 'run'), input_size=32,
                            images={'source': f'crops:{images}/0/0.png', 'num_images': 50}, scoring={'drop': 1})
    teacher = create_model('timm:resnet18')
    checked = check_inputs(config, teacher, resolve_data_config(teacher, input_size=32))
    assert len(checked.pool) == 50 and not (tmp_path / 'run').exists()


# Issue 15: every argument is checked before the long work starts.
def test_data_naming_a_file_says_it_is_a_file(capsys, images, users):
    _, file = users
    for path in (file, os.path.join(images, '0', '0.png')):
        for command in ('eval', 'robustness'):
            code, _, err = cli(capsys, command, *MODEL, '--data', path)
            assert code == 2 and f"'{path}' is a file" in err and 'folder of images' in err
            assert 'does not exist' not in err
