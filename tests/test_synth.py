"""synth: BatchNorm-statistic inversion, the resumable/sharded writer and the CLI, on tiny random models."""
from dataclasses import replace
import inspect
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import accelerate_launch, launch_log, randomize_norms
from practise_df import create_model
from synth.data import ImageFolderDataset
import synth
from synth import InversionConfig, get_preset, invert_batch
from synth.inversion import evaluate_images, pixel_bounds, quantize
from synth.losses import BatchNormStatHooks, competition_loss
from synth.synthesize import SynthesisJob, batch_seed, class_targets, synthesize_shard
from synth.writer import SHARD_PATTERN, ShardWriter, merge_metadata, read_records

RES = 32
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
DATA_CONFIG = {'input_size': (3, RES, RES), 'interpolation': 'bilinear', 'mean': MEAN, 'std': STD,
               'crop_pct': 1.0, 'crop_mode': 'center'}
# A short two-phase schedule: 16 px then 32 px, so both phases and the best-snapshot logic run.
TINY = InversionConfig(phases=((0.5, 3), (1.0, 3)), warmup=1)


@pytest.fixture(scope='module')
def teacher():
    torch.manual_seed(0)
    return randomize_norms(create_model('timm:test_resnet', num_classes=10), seed=1)


def run(teacher, out, n, **kw):
    kw = {'data_config': DATA_CONFIG, 'batch_size': 4, 'config': TINY, 'progress': False, **kw}
    return synth.synthesize(teacher, str(out), n, **kw)


def png_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
                  if f.endswith('.png'))


# --- losses -----------------------------------------------------------------------------------------

def test_bn_hook_matches_definition_and_is_removed():
    bn1, bn2 = nn.BatchNorm2d(3).eval(), nn.BatchNorm2d(3).eval()
    bn1.running_mean.fill_(0.5)
    bn2.running_var.fill_(2.0)
    model = nn.Sequential(bn1, bn2)
    x = torch.randn(4, 3, 8, 8)

    def term(bn, inp):
        return ((bn.running_mean - inp.mean((0, 2, 3))).norm() +
                (bn.running_var - inp.var((0, 2, 3), unbiased=False)).norm())
    with BatchNormStatHooks(model, first_multiplier=10.0) as hooks:
        model(x)
        loss = hooks.pop()
    expected = 10 * term(bn1, x) + term(bn2, bn1(x))
    torch.testing.assert_close(loss, expected)
    assert not bn1._forward_hooks and not bn2._forward_hooks


def test_competition_loss_is_one_for_agreement_and_lower_for_disagreement():
    a = torch.randn(5, 10)
    torch.testing.assert_close(competition_loss(a, a), torch.ones(5))
    b = torch.zeros(5, 10)
    b[:, 0] = 20
    a = torch.zeros(5, 10)
    a[:, 1] = 20
    assert (competition_loss(a, b) < 0.8).all()


# --- presets ----------------------------------------------------------------------------------------

def test_reference_preset_is_deepinversion_and_fast_is_5x_cheaper():
    ref = get_preset('reference')
    assert ref.phases == ((0.5, 2000), (1.0, 1000)) and ref.lr == 0.25 and ref.betas == (0.5, 0.9)
    assert (ref.bn, ref.first_bn_multiplier, ref.tv_l2, ref.l2, ref.ce) == (0.01, 10.0, 1e-4, 1e-5, 1.0)
    assert ref.warmup == 100 and ref.jitter * 224 == pytest.approx(30)
    assert get_preset('fast').steps * 5 <= ref.steps
    scaled = get_preset('reference', steps=300)
    assert scaled.phases == ((0.5, 200), (1.0, 100)) and scaled.warmup == 10
    assert get_preset('fast', steps=7).steps == 7
    with pytest.warns(DeprecationWarning, match='use steps'):  # the names of earlier releases still work
        assert get_preset('fast', iterations=7).steps == 7
    with pytest.warns(DeprecationWarning, match='use InversionConfig.steps'):
        assert ref.iterations == 3000
    with pytest.raises(ValueError, match='Unknown synthesis preset'):
        get_preset('slow')
    with pytest.raises(ValueError, match='fewer than the 2'):
        get_preset('reference', steps=1)


# --- inversion --------------------------------------------------------------------------------------

def test_invert_batch_lowers_losses_and_returns_valid_images(teacher):
    teacher.train()  # the caller's mode and flags must come back unchanged
    config = InversionConfig(phases=((0.5, 10), (1.0, 15)), warmup=2)
    targets = torch.tensor([0, 1, 2, 3, 4, 5])
    result = invert_batch(teacher, targets, config, resolution=RES, mean=MEAN, std=STD, seed=0)
    assert teacher.training and all(p.requires_grad for p in teacher.parameters())
    teacher.eval()

    assert result.images.shape == (6, 3, RES, RES) and result.teacher_passes == 25 * 6
    lo, hi = pixel_bounds(MEAN, STD)
    assert ((result.images >= lo - 1e-6) & (result.images <= hi + 1e-6)).all()
    assert torch.isfinite(result.best_loss).all()
    loss = result.history['loss']
    final = result.history['loss'][10:]  # one resolution: comparable values
    assert len(loss) == 25 and np.mean(final[-4:]) < np.mean(final[:4])
    # Clean view: the images fit the BatchNorm statistics and the targets better than the initial noise.
    torch.manual_seed(0)
    noise = torch.max(torch.min(torch.randn(6, 3, RES, RES), hi), lo)
    before, after = evaluate_images(teacher, noise, targets), evaluate_images(teacher, result.images, targets)
    assert after['bn'] < before['bn']
    assert after['ce'].mean() < before['ce'].mean()


def test_invert_batch_is_reproducible_by_seed(teacher):
    targets = torch.tensor([1, 2, 3])
    a = invert_batch(teacher, targets, TINY, resolution=RES, mean=MEAN, std=STD, seed=3)
    b = invert_batch(teacher, targets, TINY, resolution=RES, mean=MEAN, std=STD, seed=3)
    c = invert_batch(teacher, targets, TINY, resolution=RES, mean=MEAN, std=STD, seed=4)
    torch.testing.assert_close(a.images, b.images)
    assert not torch.allclose(a.images, c.images)


def test_invert_batch_with_student_and_kornia_augmentations(teacher):
    student = create_model('timm:test_resnet', num_classes=10)
    config = InversionConfig(phases=((1.0, 3),), warmup=1, crop_scale=(0.5, 1.0), color_jitter=0.3, init='smooth',
                             param='pyramid')
    result = invert_batch(teacher, torch.tensor([0, 1]), config, resolution=RES, mean=MEAN, std=STD, student=student)
    assert result.images.shape == (2, 3, RES, RES) and torch.isfinite(result.best_loss).all()


def test_pyramid_parametrization_composes_and_projects_into_range():
    from synth.param import PyramidImage
    init = torch.randn(2, 3, 32, 32)
    image = PyramidImage(init)
    assert [tuple(p.shape[-2:]) for p in image.levels] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    torch.testing.assert_close(image(), init)  # coarse levels start at zero
    with torch.no_grad():
        for level in image.levels[1:]:
            level.normal_()
    lo, hi = pixel_bounds(MEAN, STD)
    assert not ((image() >= lo) & (image() <= hi)).all()
    image.project(lo, hi)
    assert ((image() >= lo - 1e-5) & (image() <= hi + 1e-5)).all()


def test_quantize_round_trips_through_8_bit():
    x = torch.rand(2, 3, 4, 4)
    pixels, decoded = quantize((x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1),
                               MEAN, STD)
    assert pixels.dtype == torch.uint8
    torch.testing.assert_close(pixels.float() / 255, x, atol=0.5 / 255 + 1e-6, rtol=0)
    _, again = quantize(decoded, MEAN, STD)
    torch.testing.assert_close(again, decoded)


def test_targets_cycle_through_classes_for_any_batch_size():
    assert class_targets(range(7), [3, 5]).tolist() == [3, 5, 3, 5, 3, 5, 3]
    assert class_targets(range(4, 7), list(range(10))).tolist() == [4, 5, 6]
    assert len({batch_seed(0, b) for b in range(100)} | {batch_seed(1, b) for b in range(100)}) == 200


# --- synthesize: output folder, resume, shards ------------------------------------------------------

def test_synthesize_writes_a_readable_class_folder(teacher, tmp_path):
    out = tmp_path / 'synth'
    summary = run(teacher, out, 7, classes=[1, 3, 8])  # batches of 4, 3: a short last batch
    assert summary['num_images'] == summary['generated'] == 7 and summary['teacher_passes'] == 7 * TINY.steps
    assert 0 <= summary['top1_agreement'] <= 100 and summary['bn_loss'] > 0
    files = png_files(out)
    assert len(files) == 7 and sorted(os.listdir(out)) == ['0001', '0003', '0008', 'metadata-rank0.jsonl',
                                                           'metadata.jsonl', 'synth_config.json']
    records = [json.loads(line) for line in open(out / 'metadata.jsonl')]
    assert [r['file_name'] for r in records] == sorted(files, key=lambda f: int(f[5:13]))
    assert [r['target'] for r in records] == [1, 3, 8, 1, 3, 8, 1]
    for r in records:
        assert r['file_name'].startswith(f"{r['target']:04d}/")
        assert 0 <= r['teacher_prob'] <= 1 and r['loss_bn'] > 0 and r['seed'] == batch_seed(0, r['batch'])
        with Image.open(out / r['file_name']) as im:
            assert im.size == (RES, RES) and im.mode == 'RGB'

    ds = ImageFolderDataset(str(out), class_to_idx=synth.class_to_idx(str(out)))
    assert len(ds) == 7 and sorted(label for _, label in ds.samples) == sorted(r['target'] for r in records)

    import datasets
    hf = datasets.load_dataset('imagefolder', data_dir=str(out), split='train')
    assert len(hf) == 7 and sorted(hf['target']) == sorted(r['target'] for r in records)
    assert hf[0]['image'].size == (RES, RES)


def test_interrupted_run_resumes_to_exactly_n_identical_images(teacher, tmp_path, monkeypatch):
    clean = tmp_path / 'clean'
    run(teacher, clean, 6, batch_size=2)

    out = tmp_path / 'resumed'
    write_batch = ShardWriter.write_batch
    calls = []

    def crash_on_second_batch(self, pixels, records):
        calls.append(len(records))
        if len(calls) == 2:
            raise KeyboardInterrupt('simulated crash')
        return write_batch(self, pixels, records)
    monkeypatch.setattr(ShardWriter, 'write_batch', crash_on_second_batch)
    with pytest.raises(KeyboardInterrupt):
        run(teacher, out, 6, batch_size=2)
    monkeypatch.setattr(ShardWriter, 'write_batch', write_batch)
    assert len(png_files(out)) == 2 and not (out / 'metadata.jsonl').exists()
    # An append cut short by the crash: the half line is dropped, not parsed.
    with open(out / 'metadata-rank0.jsonl', 'a') as f:
        f.write('{"file_name": "0001/000')

    summary = run(teacher, out, 6, batch_size=2)
    assert summary['skipped_batches'] == 1 and summary['generated'] == 4 and summary['num_images'] == 6
    assert png_files(out) == png_files(clean)
    for f in png_files(out):  # same seeds per batch: the same pixels as an uninterrupted run
        assert np.array_equal(np.asarray(Image.open(out / f)), np.asarray(Image.open(clean / f)))
    lines = open(out / 'metadata.jsonl').read().splitlines()
    assert len(lines) == 6 and len({json.loads(line)['file_name'] for line in lines}) == 6

    again = run(teacher, out, 6, batch_size=2)  # nothing left to do
    assert again['generated'] == 0 and again['num_images'] == 6
    more = run(teacher, out, 8, batch_size=2)  # a larger N extends the set
    assert more['generated'] == 2 and len(png_files(out)) == 8
    with pytest.raises(ValueError, match='already holds 8'):  # fewer than on disk: refused, nothing deleted
        run(teacher, out, 6, batch_size=2)
    assert len(png_files(out)) == 8


def test_resume_with_other_settings_is_refused(teacher, tmp_path):
    run(teacher, tmp_path / 's', 2)
    with pytest.raises(ValueError, match='seed'):
        run(teacher, tmp_path / 's', 2, seed=1)


def test_two_ranks_write_disjoint_shards(teacher, tmp_path):
    out = str(tmp_path / 'ranks')
    job = SynthesisJob(out_dir=out, num_images=7, config=TINY, resolution=RES, mean=MEAN, std=STD, batch_size=2,
                       seed=0, classes=tuple(range(10)), num_classes=10)
    kw = dict(num_processes=2, progress=False)
    shards = [synthesize_shard(teacher, job, process_index=r, **kw) for r in (0, 1)]
    assert [s['generated'] for s in shards] == [4, 3]  # batches 0, 2 | 1, 3 (the last holds one image)
    per_rank = [[json.loads(line) for line in open(os.path.join(out, SHARD_PATTERN.format(rank=r)))]
                for r in (0, 1)]
    files = [{rec['file_name'] for rec in recs} for recs in per_rank]
    assert not files[0] & files[1] and len(files[0] | files[1]) == 7
    assert {rec['batch'] % 2 for rec in per_rank[1]} == {1}
    assert not {rec['seed'] for rec in per_rank[0]} & {rec['seed'] for rec in per_rank[1]}
    assert len(merge_metadata(out, 7)) == 7 and len(read_records(out)) == 7
    # Resuming with one process finds both shards done.
    assert synthesize_shard(teacher, job, num_processes=1, progress=False)['generated'] == 0


def test_model_without_batchnorm_is_refused_before_writing(tmp_path):
    vit = create_model('timm:test_vit', num_classes=10)
    with pytest.raises(ValueError, match='no BatchNorm.*out-of-domain'):
        synth.synthesize(vit, str(tmp_path / 'never'), 4, progress=False)
    assert not (tmp_path / 'never').exists()
    with pytest.raises(ValueError, match='out-of-domain'):
        invert_batch(vit, torch.tensor([0]), TINY, resolution=RES, mean=MEAN, std=STD)


def test_bad_classes_are_refused(teacher, tmp_path):
    with pytest.raises(ValueError, match='outside'):
        run(teacher, tmp_path / 'c', 2, classes=[3, 10])


def test_torchvision_model_without_num_classes_attribute(tmp_path):
    model = create_model('torchvision:mobilenet_v3_small', num_classes=5)
    assert not hasattr(model, 'num_classes')
    summary = run(model, tmp_path / 'tv', 3, batch_size=3)
    assert summary['num_images'] == 3
    assert [json.loads(line)['target'] for line in open(tmp_path / 'tv' / 'metadata.jsonl')] == [0, 1, 2]


# --- CLI --------------------------------------------------------------------------------------------

def test_cli_command_and_rendering(tmp_path, capsys):
    from practise_df.cli import main
    code = main(['synth', '--model', 'timm:test_resnet', '--output-dir', str(tmp_path / 'cli'), '--num-images', '3',
                 '--input-size', str(RES), '--synth-steps', '2', '--batch-size', '3', '--classes', '7,9', '--json'])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result['num_images'] == 3 and result['steps'] == 2 and result['preset'] == 'fast'
    assert result['resolution'] == RES and sorted(os.listdir(tmp_path / 'cli'))[:2] == ['0007', '0009']
    assert main(['synth', '--model', 'timm:test_resnet', '--output-dir', str(tmp_path / 'cli'), '--num-images', '3',
                 '--input-size', str(RES), '--synth-steps', '2', '--batch-size', '3', '--classes', '7,9']) == 0
    text = capsys.readouterr().out
    assert 'images in folder' in text and 'teacher passes / image' in text and '(1 batch(es) already on disk)' in text
    with pytest.raises(SystemExit):  # argparse: exit status 2 and a usage message naming --classes
        main(['synth', '--model', 'timm:test_resnet', '--output-dir', str(tmp_path / 'x'), '--num-images', '1',
              '--classes', 'a,b'])
    assert '--classes' in capsys.readouterr().err


def test_synthesis_never_writes_into_a_folder_of_the_user(teacher, tmp_path):
    folder = tmp_path / 'u'
    (folder / '0000').mkdir(parents=True)
    (folder / '0000' / '00000000.png').write_bytes(b'my picture')
    with pytest.raises(FileExistsError, match='not a synthesized set'):
        run(teacher, folder, 2)
    assert (folder / '0000' / '00000000.png').read_bytes() == b'my picture'
    assert sorted(os.listdir(folder)) == ['0000']


def test_synthesized_images_are_read_as_optimised(teacher, tmp_path):
    """SynthesizedImages gives the stored pixels at their own size and normalisation, refuses another
    input size or normalisation, and augments only by flips and shifts of the same pixels."""
    run(teacher, tmp_path / 's', 4, classes=[2, 5])
    plain = synth.SynthesizedImages(str(tmp_path / 's'), input_size=(3, RES, RES), mean=MEAN, std=STD)
    x, target = plain[0]
    stored = torch.from_numpy(np.array(Image.open(tmp_path / 's' / '0002' / '00000000.png'))).permute(2, 0, 1)
    mean, std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)
    assert target == 2 and x.shape == (3, RES, RES)
    assert torch.allclose(x, (stored.float() / 255 - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match=f'synthesized at {RES}x{RES} px but the model takes 64x64'):
        synth.SynthesizedImages(str(tmp_path / 's'), input_size=64)
    with pytest.raises(ValueError, match='another teacher'):
        synth.SynthesizedImages(str(tmp_path / 's'), mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match='another teacher'):  # a one-channel model's normalisation
        synth.SynthesizedImages(str(tmp_path / 's'), mean=list(MEAN)[:1], std=list(STD)[:1])
    augmented = synth.SynthesizedImages(str(tmp_path / 's'), augment=True)
    torch.manual_seed(0)
    views = [augmented[0][0] for _ in range(8)]
    assert any(not torch.equal(v, x) for v in views)
    for v in views:  # a circular shift, maybe flipped: the same multiset of pixel values
        assert torch.equal(v.flatten().sort().values, x.flatten().sort().values)
    with pytest.raises(FileNotFoundError, match='not a folder written by synth.synthesize'):
        synth.SynthesizedImages(str(tmp_path))


def test_public_api_surface():
    """``from synth import *`` gives exactly the names synth lists, and each is synth's own, not a dependency's
    leaking through (test_structure pins the list itself)."""
    namespace = {}
    exec('from synth import *', namespace)
    assert sorted(set(namespace) - {'__builtins__'}) == sorted(synth.__all__)
    foreign = {name: obj.__module__ for name, obj in namespace.items()
               if inspect.getmodule(obj) is not None and not obj.__module__.startswith('synth.')}
    assert not foreign, f're-exported from elsewhere: {foreign}'


def test_two_processes_under_accelerate_launch(tmp_path):
    """Two real ranks (accelerate's torchrun launcher; gloo on a machine without GPUs). A forked
    ``debug_launcher`` can deadlock once the test process has started its OpenMP threads."""
    out = str(tmp_path / 'launched')
    proc = accelerate_launch('tests/scripts/synth_two_ranks.py', [out], timeout=600)
    assert proc.returncode == 0, launch_log(proc)
    shards = sorted(f for f in os.listdir(out) if f.startswith('metadata-rank'))
    assert shards == ['metadata-rank0.jsonl', 'metadata-rank1.jsonl']
    assert len(png_files(out)) == 5 and len(open(os.path.join(out, 'metadata.jsonl')).read().splitlines()) == 5


def test_batchnorm_statistics_of_a_set_run_in_parts_equal_the_whole_batch(teacher):
    """set_part pools each part's statistics with the other parts': once every part has run, the loss of a
    part equals the loss of the whole batch run at once (MCT's set-level matching)."""
    x = torch.randn(6, 3, RES, RES)
    with torch.no_grad(), synth.BatchNormStatHooks(teacher) as hooks:
        teacher.eval()(x)
        whole = hooks.pop()
        for part, chunk in enumerate((x[:2], x[2:4], x[4:])):
            hooks.set_part(part)
            teacher(chunk)
            hooks.pop()
        hooks.set_part(1)
        teacher(x[2:4])
        pooled = hooks.pop()
    assert torch.allclose(pooled, whole, rtol=1e-4)


def test_canvas_parts_and_pixel_prior_keep_the_output_contract(teacher):
    """A canvas larger than the image, micro-batches and the pixel prior still give images of the asked size
    and range, the same for the same seed."""
    config = replace(TINY, canvas=0.25, micro_batch=2, pixel_stats=1.0, jitter=0.0)
    targets = torch.tensor([0, 1, 2, 3, 4])
    a = invert_batch(teacher, targets, config, resolution=RES, mean=MEAN, std=STD, seed=5)
    b = invert_batch(teacher, targets, config, resolution=RES, mean=MEAN, std=STD, seed=5)
    assert a.images.shape == (5, 3, RES, RES) and torch.equal(a.images, b.images)
    lo, hi = pixel_bounds(MEAN, STD)
    assert (a.images >= lo - 1e-6).all() and (a.images <= hi + 1e-6).all()
    assert a.teacher_passes == 5 * TINY.steps and torch.isfinite(a.best_loss).all()


def test_pixel_prior_pulls_the_colour_towards_natural_statistics(teacher):
    """With only the pixel prior (no class, no BatchNorm term) the mean colour moves to the target."""
    target = torch.tensor([0.2, 0.5, 0.8])

    def colour(weight):
        config = replace(TINY, phases=((1.0, 40),), ce=0.0, bn=0.0, tv_l2=0.0, l2=0.0, pixel_stats=weight,
                         pixel_mean=tuple(target.tolist()), jitter=0.0, flip=0.0, lr=0.05)
        images = invert_batch(teacher, torch.tensor([0, 1, 2, 3]), config, resolution=RES, mean=MEAN, std=STD,
                              seed=0).images
        return (images * torch.tensor(STD).view(1, 3, 1, 1) + torch.tensor(MEAN).view(1, 3, 1, 1)).mean((0, 2, 3))
    assert (colour(1.0) - target).norm() < 0.5 * (colour(0.0) - target).norm()


def test_a_synthesized_folder_given_as_images_is_read_as_optimised(teacher, tmp_path):
    """load_images (compress --images DIR) recognises a synthesized folder and never resizes it."""
    run(teacher, tmp_path / 's', 4, classes=[2, 5])
    pool = synth.load_images(str(tmp_path / 's'), DATA_CONFIG, num_images=3)
    assert isinstance(pool, synth.SynthesizedImages) and len(pool) == 3
    assert torch.equal(pool[0][0], synth.SynthesizedImages(str(tmp_path / 's'), max_images=3)[0][0])
