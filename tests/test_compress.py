import json
import os

import pytest
import torch

from practise_df import load_compressed
from practise_df.compress import CompressConfig, compress
from practise_df.finetune import FinetuneConfig

from conftest import make_image_folder, randomize_norms


def _config(out, images, **kw):
    kw.setdefault('drop', 1)
    return CompressConfig(model='timm:resnet18', output_dir=str(out), images=images, num_images=12,
                          heldout_images=4, resolution=32, score_images=8, latency_batch_size=2,
                          latency_repeats=2, eval_data=images,
                          finetune=FinetuneConfig(iterations=3, batch_size=4, checkpoint_every=2), **kw)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """One complete compress run on a generated image folder, shared by the tests below."""
    root = tmp_path_factory.mktemp('compress')
    images = make_image_folder(str(root / 'images'), classes=('a', 'b', 'c'), per_class=4)
    out = root / 'run'
    report = compress(_config(out, images), progress=False)
    return out, images, report


def test_compress_writes_every_artefact(finished_run):
    out, _, report = finished_run
    assert sorted(os.listdir(out)) == ['block_latency.json', 'checkpoints', 'model', 'recovered', 'report.json',
                                       'run.json', 'scores.json', 'scores.partial.jsonl']
    assert json.load(open(out / 'report.json')) == json.loads(json.dumps(report))
    assert len(report['dropped_blocks']) == 1
    assert report['params']['student'] < report['params']['teacher']
    assert report['macs']['student'] < report['macs']['teacher']
    assert {'teacher_ms', 'student_ms', 'saved_pct', 'device'} <= set(report['latency'])
    assert 0 <= report['heldout_agreement'] <= 100
    assert report['eval']['student']['images'] == 12 and 'top5' in report['eval']['teacher']
    assert report['eval']['before_finetune']['images'] == 12
    assert 'predictions' not in report['eval']['teacher']
    scores = json.load(open(out / 'scores.json'))
    assert scores['selected'] == report['dropped_blocks'] == [min(scores['scores'], key=lambda s: s['score'])['block']]
    student = load_compressed(str(out / 'model'))
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


def test_resume_reuses_scores_and_checkpoints(finished_run):
    out, images, report = finished_run
    scores_mtime = os.path.getmtime(out / 'scores.json')
    weights = load_compressed(str(out / 'model')).state_dict()
    again = compress(_config(out, images), resume=True, progress=False)
    assert os.path.getmtime(out / 'scores.json') == scores_mtime, 'scores are not recomputed'
    assert again['dropped_blocks'] == report['dropped_blocks']
    resumed = load_compressed(str(out / 'model')).state_dict()
    assert all(torch.equal(v, resumed[k]) for k, v in weights.items()), 'finished finetuning is not redone'


def test_output_dir_is_never_mixed_or_lost(tmp_path, finished_run):
    out, images, _ = finished_run
    foreign = tmp_path / 'mine'
    foreign.mkdir()
    (foreign / 'thesis.tex').write_text('precious')
    with pytest.raises(FileExistsError, match='not a practise-df run'):
        compress(_config(foreign, images), overwrite=True, progress=False)
    assert os.listdir(foreign) == ['thesis.tex'] and (foreign / 'thesis.tex').read_text() == 'precious'
    with pytest.raises(FileExistsError, match='--resume to continue it or --overwrite'):
        compress(_config(out, images), progress=False)
    with pytest.raises(ValueError, match=r'different settings \(drop, latency_reduction\)'):
        compress(_config(out, images, drop=None, latency_reduction=0.1), resume=True, progress=False)


def test_overwrite_replaces_an_earlier_run(tmp_path, image_folder):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'run.json').write_text(json.dumps({'model': 'timm:resnet18', 'stale': True}))
    (out / 'scores.json').write_text('{"stale": true}')
    report = compress(_config(out, image_folder, drop=2), overwrite=True, progress=False)
    assert len(report['dropped_blocks']) == 2
    assert 'stale' not in json.load(open(out / 'run.json'))


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match='exactly one of drop'):
        CompressConfig(model='timm:resnet18', output_dir=str(tmp_path))
    with pytest.raises(ValueError, match='at least 2'):
        CompressConfig(model='timm:resnet18', output_dir=str(tmp_path), drop=1, num_images=1)
    with pytest.raises(ValueError, match="Unknown finetuning loss 'bp'"):
        FinetuneConfig(loss='bp')


@pytest.mark.parametrize('adaptors', [True, False])
def test_adaptors_switch_decides_what_the_recovered_student_is(tmp_path, image_folder, adaptors):
    """--no-adaptors keeps the teacher's weights around the gaps; adaptors change the convs next to them."""
    from safetensors.torch import save_file

    from practise_df import create_model
    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:resnet18'))  # timm zero-initialises the last norm of each block
    weights = tmp_path / 'teacher.safetensors'
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    out = tmp_path / 'run'
    config = _config(out, image_folder, weights=str(weights), adaptors=adaptors)
    config.finetune.iterations = 0
    report = compress(config, progress=False)
    assert report['adaptors'] is adaptors
    assert json.load(open(out / 'recovered' / 'config.json'))['stage'].startswith('blocks dropped')
    recovered = load_compressed(str(out / 'recovered')).state_dict()
    dropped = report['dropped_blocks'][0]
    kept = {k: v for k, v in teacher.state_dict().items() if not k.startswith(dropped + '.')}
    assert set(recovered) == set(kept)
    changed = [k for k, v in kept.items() if not torch.equal(v, recovered[k])]
    assert (len(changed) > 0) is adaptors, changed
