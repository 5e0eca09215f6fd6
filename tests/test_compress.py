"""practise_df.pipeline's compress (the compress command): its artefacts, arguments checked before the long
work, resume, determinism (a run killed at random points resumes to the uninterrupted result; issue 7) and
what a run says about itself."""
import hashlib
import importlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (ENV, MODEL, ROOT, TEACHER_SIZE, TINY, cli, compress_args, make_image_folder, randomize_norms,
                      run_settings)
from practise_df import load_compressed
from practise_df.config import (CompressConfig, EvalConfig, FinetuneConfig, ImagesConfig, LatencyConfig, ScoringConfig,
                                SynthesisConfig)
from practise_df.finetune import COMPLETE_MARKER, DATAFREE_MIX
from practise_df.pipeline import _finetune_config, compress

# resnet18 at 64 channels in every stage: resnet18's blocks, a fifteenth of its parameters (the runs are plumbing)
NARROW = {'channels': [64, 64, 64, 64]}


def _config(out, images, scoring=None, **kw):
    return CompressConfig(model='timm:resnet18', model_kwargs=NARROW, output_dir=str(out), input_size=32,
                          images=ImagesConfig(source=images, num_images=12, heldout=4),
                          scoring=ScoringConfig(**{'num_images': 8, 'adaptor_steps': 10, **(scoring or {'drop': 1})}),
                          latency=LatencyConfig(batch_size=2, repeats=2), eval=EvalConfig(data=images),
                          finetune=FinetuneConfig(steps=3, batch_size=4, checkpoint_every=2), **kw)


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
    """One complete compress run on a generated image folder, shared by the tests below."""
    root = tmp_path_factory.mktemp('compress')
    images = make_image_folder(str(root / 'images'), classes=('0', '1', '2'), per_class=4)  # class indices
    out = root / 'run'
    report = compress(_config(out, images), progress=False)
    return out, images, report


def test_compress_writes_every_artefact(finished_run):
    out, images, report = finished_run
    # the whole finetuned student, when the recovery choice kept another (tests/test_recovery.py)
    rejected = ['rejected'] if report['recovery']['kept'] != 'mix1' else []
    assert sorted(os.listdir(out)) == sorted(['block_latency.json', 'checkpoints', 'model', 'dropped', 'report.json',
                                              'run.json', 'scores.json', 'scores.partial.jsonl'] + rejected)
    assert CompressConfig.from_file(str(out / 'run.json')) == _config(out, images), 'run.json is the settings file'

    assert json.load(open(out / 'report.json')) == report.to_dict(), 'report.json is the Report'
    assert report.dropped_blocks == report['dropped_blocks'], 'read as the dict it was before issue 30'
    assert len(report['dropped_blocks']) == 1
    assert report['params']['student'] < report['params']['teacher']
    assert report['macs']['student'] < report['macs']['teacher']
    assert {'teacher_ms', 'student_ms', 'saved_pct', 'saved_low', 'saved_high', 'device', 'runs', 'load'} <= \
        set(report['latency'])
    assert report['latency']['runs'] == 2 and 'too few' in report['latency']['warning']  # 2 runs give no interval
    assert report['latency']['warning'] in open(out / 'model' / 'README.md').read()
    assert 0 <= report['heldout_agreement'] <= 100
    assert report['eval']['student']['images'] == 12 and 'top5' in report['eval']['teacher']
    assert report['eval']['before_finetune']['images'] == 12
    assert 'predictions' not in report['eval']['teacher']
    assert report['finetune']['mix'] == report['recovery']['mix'] and report['finetune']['freeze_bn'] is True
    scores = json.load(open(out / 'scores.json'))
    assert scores['selected'] == report['dropped_blocks'] == [min(scores['scores'], key=lambda s: s['score'])['block']]
    student = load_compressed(str(out / 'model'))
    assert student(torch.randn(1, 3, 32, 32)).shape == (1, 1000)


@pytest.mark.parametrize('real, finetune, expected', [
    (False, {}, (True, DATAFREE_MIX)),  # synthesized or out-of-domain images: frozen BatchNorm, WiSE-FT
    (True, {}, (False, 1.0)),  # real images: the official few-shot setting, the finetuned weights whole
    (False, {'mix': 1.0, 'freeze_bn': False}, (False, 1.0)),  # what the user sets wins
    (True, {'mix': 0.5}, (False, 0.5)),
])
def test_finetune_defaults_follow_the_images(real, finetune, expected):
    config = CompressConfig(model='timm:resnet18', output_dir='unused', images=ImagesConfig(real=real),
                            scoring=ScoringConfig(drop=1), finetune=FinetuneConfig(**finetune))
    resolved = _finetune_config(config)
    assert (resolved.freeze_bn, resolved.mix) == expected


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
    with pytest.raises(ValueError, match=r'other settings \(scoring.drop, scoring.latency_reduction\)'):
        compress(_config(out, images, scoring={'latency_reduction': 0.1}), resume=True, progress=False)


def test_overwrite_replaces_an_earlier_run(tmp_path, image_folder, finished_run):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'run.json').write_text(json.dumps(_config(out, image_folder, seed=7).to_dict()))  # an earlier run's
    (out / 'scores.json').write_text('{"stale": true}')
    (out / 'notes.txt').write_text('mine')  # a file of the user's beside the run: kept
    shutil.copytree(finished_run[0] / 'dropped', out / 'recovered')  # as an earlier release named the folder
    report = compress(_config(out, image_folder, scoring={'drop': 2}), overwrite=True, progress=False)
    assert len(report['dropped_blocks']) == 2
    assert json.load(open(out / 'run.json'))['seed'] == 0 and (out / 'notes.txt').read_text() == 'mine'
    assert not (out / 'recovered').exists()


def test_resume_may_change_settings_of_stages_not_run_yet(tmp_path, image_folder):
    """A run stopped (or failed) after scoring can resume with other finetuning or evaluation settings, but
    not with other scoring settings; the new settings are recorded in run.json."""
    out = tmp_path / 'run'
    config = _config(out, image_folder)
    config.finetune.steps, config.eval.data = 0, None
    compress(config, progress=False)
    os.remove(out / 'report.json')
    shutil.rmtree(out / 'model')
    # as an earlier release wrote it: settings finetune.iterations and scoring.images, the folder recovered/
    old = json.load(open(out / 'run.json'))
    old['finetune']['iterations'] = old['finetune'].pop('steps')
    old['scoring']['images'] = old['scoring'].pop('num_images')
    (out / 'run.json').write_text(json.dumps(old))
    os.rename(out / 'dropped', out / 'recovered')
    again = _config(out, image_folder)
    again.finetune.steps, again.finetune.eval_every = 2, 1
    report = compress(again, resume=True, progress=False)
    assert report['finetune']['steps'] == 2 and json.load(open(out / 'run.json'))['finetune']['steps'] == 2
    assert (out / 'dropped').is_dir() and not (out / 'recovered').exists(), 'the old folder resumes under its new name'
    # --eval-every: the held-out images (4) evaluated after step 1 and at the end
    assert [(e['step'], e['images']) for e in report['finetune']['evaluations']] == [(1, 4), (2, 4)]
    if report['guard']['kept'] == 'finetuned':  # the last evaluation measures the finetuned student
        assert report['finetune']['evaluations'][-1]['agreement'] == report['heldout_agreement']
    with pytest.raises(ValueError, match=r'finished stage.*scoring.num_images'):
        compress(_config(out, image_folder, scoring={'drop': 1, 'num_images': 6}), resume=True, progress=False)


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match='Say what to drop'):
        CompressConfig(model='timm:resnet18', output_dir=str(tmp_path))
    with pytest.raises(ValueError, match='in exactly one way'):
        ScoringConfig(drop=1, latency_reduction=0.2)
    with pytest.raises(ValueError, match='at least 2'):
        ImagesConfig(num_images=1)
    with pytest.raises(ValueError, match='fraction between 0 and 1'):
        ScoringConfig(latency_reduction=1.5)
    with pytest.raises(ValueError, match="Unknown finetuning loss 'bp'"):
        FinetuneConfig(loss='bp')


@pytest.mark.parametrize('adaptors', [True, False])
def test_adaptors_switch_decides_what_the_recovered_student_is(tmp_path, image_folder, adaptors):
    """--no-adaptors keeps the teacher's weights around the gaps; adaptors change the convs next to them."""
    from safetensors.torch import save_file

    from practise_df import create_model
    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:resnet18', **NARROW))  # timm zero-initialises each block's last norm
    weights = tmp_path / 'teacher.safetensors'
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(weights))
    out = tmp_path / 'run'
    config = _config(out, image_folder, weights=str(weights), scoring={'drop': 1, 'keep_adaptors': adaptors})
    config.finetune.steps = 0
    report = compress(config, progress=False)
    assert report['adaptors'] is adaptors
    assert json.load(open(out / 'dropped' / 'config.json'))['stage'].startswith('blocks dropped')
    recovered = load_compressed(str(out / 'dropped')).state_dict()
    dropped = report['dropped_blocks'][0]
    kept = {k: v for k, v in teacher.state_dict().items() if not k.startswith(dropped + '.')}
    assert set(recovered) == set(kept)
    changed = [k for k, v in kept.items() if not torch.equal(v, recovered[k])]
    assert (len(changed) > 0) is adaptors, changed


# The run.json of a run made before issue 30 (practise-df 0.2.0 as of commit 349aeed), word for word: a settings
# file written by an earlier release must load, and rerun with `compress --config`.
OLD_RUN_JSON = {
    "model": "timm:test_resnet", "output_dir": "/gone/run", "weights": None, "num_classes": None,
    "model_kwargs": None, "input_size": None, "mean": None, "std": None, "interpolation": None, "crop_pct": None,
    "seed": 0, "images": {"source": "/gone/images", "num_images": 12, "heldout": 4, "real": False},
    "synthesis": {"preset": "fast", "steps": None, "batch_size": 32, "micro_batch": None},
    "scoring": {"drop": 1, "latency_reduction": None, "blocks": None, "estimator": "fast", "images": 8,
                "adaptor_steps": 2, "keep_adaptors": False},
    "latency": {"batch_size": 2, "device": None, "repeats": 2, "ci_width": 2.0, "max_seconds": 60.0,
                "block_latency": None, "runtime": "torch", "threads": None},
    "finetune": {"loss": "mir", "iterations": 0, "batch_size": 64, "lr": None, "momentum": 0.9, "weight_decay": 0.0001,
                 "step_at": 0.4, "gradient_accumulation_steps": 1, "kd_temperature": 4.0, "kd_weight": 1.0,
                 "max_grad_norm": 5.0, "freeze_bn": None, "checkpoint_every": 0, "keep_checkpoints": 2,
                 "eval_every": 0, "seed": None, "num_workers": 0, "mix": None},
    "eval": {"data": None, "max_images": None, "batch_size": 32, "guard": True, "guard_images": None,
             "guard_signal": "kl", "export": None},
    "robustness": {"enabled": False, "corruptions": None, "severities": None},
    "card": {"license": None, "base_model": None},
}


def test_an_old_run_json_whose_paths_moved_loads_and_fails_only_when_run(tmp_path):
    """issue 30: the config checked the disk (and imported the code that runs it), so an old run.json whose guard
    photos or images moved did not even load. It loads now; running it fails, before any work, with the message
    the check gave before."""
    settings = json.loads(json.dumps(OLD_RUN_JSON))
    settings['eval']['guard_images'] = [str(tmp_path / 'moved' / 'photo.jpg')]
    path = tmp_path / 'run.json'
    path.write_text(json.dumps(settings))
    config = CompressConfig.from_file(str(path), output_dir=str(tmp_path / 'run'))
    assert config.images.source == '/gone/images' and config.eval.guard_images == settings['eval']['guard_images']
    with pytest.raises(FileNotFoundError, match=r"moved/photo\.jpg' for crops does not exist"):
        compress(config, progress=False)
    config.eval.guard_images = None
    with pytest.raises(FileNotFoundError, match='/gone/images'):
        compress(config, progress=False)
    assert not (tmp_path / 'run').exists(), 'refused before anything was written'


def test_compress_config_reruns_an_old_run_json(capsys, tmp_path, image_folder):
    from conftest import cli
    settings = json.loads(json.dumps(OLD_RUN_JSON))
    settings['images']['source'] = image_folder
    old = tmp_path / 'old' / 'run.json'
    old.parent.mkdir()
    old.write_text(json.dumps(settings))
    code, _, err = cli(capsys, 'compress', '--config', old, '--output-dir', tmp_path / 'again', '--json')
    assert code == 0, err
    rerun = CompressConfig.from_file(str(tmp_path / 'again' / 'run.json'))
    assert rerun == CompressConfig.from_dict({**settings, 'output_dir': str(tmp_path / 'again')})
    assert len(json.load(open(tmp_path / 'again' / 'report.json'))['dropped_blocks']) == 1


def test_latency_reduction_records_each_measurement_of_the_selection(tmp_path, image_folder, monkeypatch):
    """issue 33: the whole student is timed after each block added; scores.json and report.json keep every
    measurement (blocks, saving, interval), so a user sees why the selection stopped where it did."""
    import practise_df.scoring as scoring
    from practise_df.latency import Comparison, Latency, Saving
    pending = [(4.0, 1.0, 7.0), (12.0, 9.0, 15.0)]  # the first block alone is not enough at its interval's low end

    def compare_(models, **kwargs):
        lat = Latency(1.0, 1.0, 1.0, 1, (3, 32, 32), 'cpu', 10)
        return Comparison([lat, lat], [Saving(*pending.pop(0), pairs=10)], 10, 1.0, 'interval', 2.0, 60.0)
    monkeypatch.setattr(scoring, 'compare_latency', compare_)
    out = tmp_path / 'run'
    config = _config(out, image_folder, scoring={'latency_reduction': 0.08})
    config.finetune.steps = 0
    report = compress(config, progress=False)
    steps = report.selection_steps
    assert [s['blocks'] for s in steps] == [report.dropped_blocks[:1], report.dropped_blocks]
    assert [(s['saved_pct'], s['saved_low']) for s in steps] == [(4.0, 1.0), (12.0, 9.0)]
    assert json.load(open(out / 'scores.json'))['steps'] == steps == json.load(open(out / 'report.json'))[
        'selection_steps']


PIPELINE = importlib.import_module('practise_df.pipeline')  # the module: the package exports the function too


# Issue 15: input the docs say is handled never crashes.
def test_a_bad_block_latency_file_is_named_in_the_error(capsys, tmp_path):
    path = tmp_path / 'lat.json'
    for content, says in ((json.dumps({'blocks': {'layer1.0': {'saved_ms': 1, 'saved_pct': 'n/a'}}}), 'not a number'),
                          ('{"blocks": ', 'cannot be read as JSON')):
        path.write_text(content)
        code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--block-latency', path,
                           '--output-dir', tmp_path / 'run')
        assert code == 2 and str(path) in err and says in err
        hint = err[err.index('expected'):]
        assert hint.count('{') == hint.count('}') and '{{' not in hint
    assert not (tmp_path / 'run').exists()


BAD_COMPRESS_ARGS = {
    'eval data missing': (['--eval-data', '{tmp}/missing'], 'does not exist'),
    'eval data without images': (['--eval-data', '{tmp}/empty'], 'No readable image'),
    'drop more than the candidates': (['--drop', '9'], 'only 5 droppable blocks'),
    'latency reduction 1.5': (['--latency-reduction', '1.5'], 'between 0 and 1'),
    'latency reduction 0': (['--latency-reduction', '0'], 'between 0 and 1'),
    'block latency missing': (['--block-latency', '{tmp}/missing.json'], 'does not exist'),
    'block latency not JSON': (['--block-latency', '{tmp}/empty'], 'cannot be read as JSON'),
    'block latency lacks candidates': (['--block-latency', '{tmp}/partial.json'], 'has no latency for block(s)'),
    'synth steps 0': (['--synth-steps', '0'], 'at least 1'),
    'synth steps -1': (['--synth-steps', '-1'], 'at least 1'),
    'synth steps fewer than phases': (['--synth-steps', '1'], 'fewer than the 2 resolution phases'),
    'synth batch 0': (['--synth-batch-size', '0'], 'at least 1'),
    'adaptor steps 0': (['--adaptor-steps', '0'], 'at least 1'),
    'finetune steps -1': (['--finetune-steps', '-1'], 'at least 0'),
    'finetune batch 0': (['--finetune-batch-size', '0'], 'at least 1'),
    'latency batch 0': (['--latency-batch-size', '0'], 'at least 1'),
    'eval batch -1': (['--eval-batch-size', '-1'], 'at least 1'),
    'score images 0': (['--score-images', '0'], 'at least 1'),
    'more images than the folder': (['--images', '{images}', '--num-images', '50'], 'fewer than --num-images 50'),
    'images missing': (['--images', '{tmp}/missing'], 'does not exist'),
    'photo for crops missing': (['--images', 'crops:{tmp}/missing.jpg'], 'does not exist'),
    'folder for crops without photos': (['--images', 'crops:{tmp}/empty'], 'holds no image'),
    'seed -1': (['--seed', '-1'], 'argument --seed: must be at least 0, got -1'),
    'a block named twice': (['--blocks', 'layer1.1,layer1.1'], 'names layer1.1 more than once'),
    'more held out than images': (['--heldout-images', '4'], '--heldout-images) must be fewer than num_images (4'),
    'settings file with a wrong type': (['--config', '{tmp}/typo.json'],
                                        "'checkpoint_every' must be a whole number, got 'many'"),
    'latency reduction out of reach': (['--latency-reduction', '0.99'], '--latency-reduction 0.99 cannot be reached'),
    'latency reduction out of reach of the table': (
        ['--latency-reduction', '0.5', '--block-latency', '{tmp}/small.json'], 'by the --block-latency table'),
    'resume a run that does not exist': (['--resume'], "--resume: --output-dir '{tmp}/run' does not exist"),
}


# Issue 15: every argument is checked before the long work starts.
@pytest.mark.parametrize('case', sorted(BAD_COMPRESS_ARGS))
def test_compress_checks_its_arguments_before_writing_anything(capsys, no_long_work, tmp_path, images, case):
    bad, says = BAD_COMPRESS_ARGS[case]
    (tmp_path / 'empty').mkdir()
    (tmp_path / 'partial.json').write_text(json.dumps({'blocks': {'layer1.1': {'saved_ms': 1, 'saved_pct': 1}}}))
    blocks = ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1', 'layer1.0']
    (tmp_path / 'small.json').write_text(json.dumps({'blocks': {b: {'saved_ms': 1, 'saved_pct': 5} for b in blocks}}))
    (tmp_path / 'typo.json').write_text(json.dumps({'finetune': {'checkpoint_every': 'many'}}))
    selection = [] if {'--drop', '--latency-reduction', '--blocks'} & set(bad) else ['--drop', '1']
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *MODEL, *selection, *TINY,
                       *[a.format(tmp=tmp_path, images=images) for a in bad], '--output-dir', out)
    assert code == 2 and says.format(tmp=tmp_path) in err, err
    assert not out.exists()


def _synth_pngs(out):
    root = out / 'synth'
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob('*.png')}


# Issue 15: every argument is checked before the long work starts.
def test_resume_takes_new_settings_of_unfinished_stages_only(capsys, monkeypatch, tmp_path, images):
    out = tmp_path / 'run'
    argv = ['compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out]

    def fail(*args, **kwargs):
        raise ValueError('injected failure as finetuning starts')
    monkeypatch.setattr(PIPELINE, 'finetune', fail)
    code, _, err = cli(capsys, *argv, '--finetune-steps', 2)
    assert code == 2 and 'injected' in err
    monkeypatch.undo()
    synthesized = _synth_pngs(out)
    code, _, err = cli(capsys, *argv, '--resume', '--num-images', 6)  # the images are finished
    assert code == 2 and 'images.num_images' in err
    code, out_text, _ = cli(capsys, *argv, '--resume', '--finetune-steps', 1, '--eval-data', images, '--json')
    assert code == 0 and json.loads(out_text)['finetune']['steps'] == 1 and 'eval' in json.loads(out_text)
    assert _synth_pngs(out) == synthesized, 'the images were synthesized again'


# Issue 15: every argument is checked before the long work starts.
def test_a_run_stopped_by_a_bad_argument_restarts_without_overwrite(capsys, tmp_path, images):
    out = tmp_path / 'run'
    argv = ['compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out]
    code, _, err = cli(capsys, *argv, '--eval-data', tmp_path / 'missing')
    assert code == 2 and not out.exists()
    out.mkdir()  # a run stopped after writing only its settings did no work either
    (out / 'run.json').write_text(run_settings(out, seed=7))  # other settings
    code, _, err = cli(capsys, *argv, '--eval-data', images)
    assert code == 0, err


# Issue 28: what a run says about itself.
def test_a_run_without_finetuning_says_so_and_claims_no_recovery(capsys, tmp_path):
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *MODEL, '--blocks', 'layer4.1', *TINY, '--output-dir', out)
    assert code == 0, err
    assert [line[:5] for line in err.splitlines() if line.startswith('[')] == \
        ['[1/5]', '[2/5]', '[3/5]', '[4/5]', '[5/5]']
    assert '[4/5] finetuning: skipped' in err and '--model timm:resnet18 has no --weights' in err
    card = (out / 'model' / 'README.md').read_text()
    assert 'not finetuned' in card and 'recover' not in card.split('## Use')[0]


def _cli(args):
    return [sys.executable, '-m', 'practise_df.cli', *args]


def _count(out, stage):
    if stage == 'synth':
        d = os.path.join(out, 'synth')
        return sum(f.endswith('.png') for _, _, fs in os.walk(d) for f in fs) if os.path.isdir(d) else 0
    if stage == 'scoring':
        journal = os.path.join(out, 'scores.partial.jsonl')
        return sum(1 for _ in open(journal)) if os.path.isfile(journal) else 0
    # Old checkpoints are pruned: count by the newest complete one (a kill before the first is
    # complete rightly leaves nothing to resume from).
    d = os.path.join(out, 'checkpoints')
    numbers = [int(n.rsplit('_', 1)[-1]) for n in (os.listdir(d) if os.path.isdir(d) else [])
               if os.path.exists(os.path.join(d, n, COMPLETE_MARKER))]
    return max(numbers) + 1 if numbers else 0


def _run_and_kill(args, out, stage, at_least, rng):
    """Start the CLI, SIGKILL it once ``stage`` has produced ``at_least`` items plus a random delay."""
    proc = subprocess.Popen(_cli(args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV, cwd=ROOT)
    deadline = time.time() + 600
    while _count(out, stage) < at_least:
        if proc.poll() is not None:
            raise AssertionError(f'the run ended before {stage} reached {at_least} items:\n'
                                 f'{proc.stderr.read().decode()[-3000:]}')
        assert time.time() < deadline, f'{stage} never reached {at_least} items'
        time.sleep(0.005)
    time.sleep(rng.uniform(0, 0.05))  # land anywhere, also inside a write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, 'the run finished before it could be interrupted'


def _synth_files(out):
    d = os.path.join(out, 'synth')
    files = {os.path.relpath(os.path.join(r, f), d): open(os.path.join(r, f), 'rb').read()
             for r, _, fs in os.walk(d) for f in fs if f.endswith('.png')}
    records = sorted(open(os.path.join(d, 'metadata.jsonl')).read().splitlines())
    return files, records


def _sha256(path):
    return hashlib.sha256(open(path, 'rb').read()).hexdigest()


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_killed_at_random_points_resumes_to_the_uninterrupted_result(tmp_path, teacher_files):
    """Killed with SIGKILL (no clean-up handlers run) at a random point inside synthesis, then inside scoring, then
    inside finetuning, and resumed each time, the run's artefacts match an uninterrupted run with the same seed,
    which also shows the pipeline is deterministic on CPU."""
    weights, latency = teacher_files
    inputs = {p: _sha256(p) for p in teacher_files}
    reference = tmp_path / 'reference'
    proc = subprocess.run(_cli(compress_args(reference, weights, latency)), capture_output=True, text=True, env=ENV,
                          cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    seed = int(os.environ.get('PRACTISE_DF_TEST_SEED', time.time_ns() % 10**6))
    rng = random.Random(seed)
    print(f'kill points drawn with seed {seed} (PRACTISE_DF_TEST_SEED={seed} repeats them)')
    out = tmp_path / 'interrupted'
    _run_and_kill(compress_args(out, weights, latency), out, 'synth', 4 * rng.randint(1, 3), rng)
    resume = compress_args(out, weights, latency) + ['--resume']
    _run_and_kill(resume, out, 'scoring', rng.randint(1, 3), rng)  # of 5 blocks
    _run_and_kill(resume, out, 'finetune', rng.randint(1, 4), rng)
    proc = subprocess.run(_cli(resume + ['--json']), capture_output=True, text=True, env=ENV, cwd=ROOT,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'resumed from' in proc.stderr, 'finetuning did not continue from its last checkpoint'

    assert _synth_files(out) == _synth_files(reference), 'same images, byte for byte'
    got, want = (json.load(open(d / 'scores.json')) for d in (out, reference))
    assert got['selected'] == want['selected']
    assert [(s['block'], s['recoverability']) for s in got['scores']] == \
        [(s['block'], pytest.approx(s['recoverability'], rel=1e-6)) for s in want['scores']]
    a, b = (load_compressed(str(d / 'model')).state_dict() for d in (out, reference))
    for k, v in b.items():
        assert torch.allclose(a[k].float(), v.float(), rtol=1e-5, atol=1e-7), k
    assert json.loads(proc.stdout)['dropped_blocks'] == want['selected']
    assert {p: _sha256(p) for p in teacher_files} == inputs, 'the teacher weights file was modified'
    leftovers = [os.path.join(r, f) for r, ds, fs in os.walk(out) for f in ds + fs if f.endswith(('.tmp', '.old'))]
    assert not leftovers, f'temporary files left behind: {leftovers}'


def _tree_digest(root):
    return {os.path.relpath(os.path.join(r, f), root): (_sha256(os.path.join(r, f)),
                                                        os.stat(os.path.join(r, f)).st_mtime_ns)
            for r, _, fs in os.walk(root) for f in fs}


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_inputs_are_never_modified(tmp_path, teacher_files):
    weights, _ = teacher_files
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b', 'c'), per_class=4, size=40)
    with open(os.path.join(images, 'a', 'broken.png'), 'wb') as f:
        f.write(b'\x89PNG\r\n\x1a\n truncated')  # skipped and counted, never "repaired"
    before, weights_sum = _tree_digest(images), _sha256(weights)
    config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / 'run'),
                            input_size=TEACHER_SIZE, images=ImagesConfig(source=images, num_images=12, heldout=4),
                            scoring=ScoringConfig(drop=1, num_images=8), latency=LatencyConfig(batch_size=2, repeats=2),
                            eval=EvalConfig(data=images), finetune=FinetuneConfig(steps=2, batch_size=4))
    report = compress(config, progress=False)
    assert report['eval']['teacher']['images'] == 12 and report['eval']['skipped_files'] == 1
    assert _tree_digest(images) == before and _sha256(weights) == weights_sum


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_same_seed_same_block_choice_in_process(tmp_path, teacher_files):
    """Determinism without subprocesses: scoring twice in one process gives identical scores."""
    weights, latency = teacher_files
    runs = []
    for name in ('one', 'two'):
        config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / name),
                                input_size=TEACHER_SIZE, images=ImagesConfig(num_images=8, heldout=4),
                                synthesis=SynthesisConfig(batch_size=4, steps=5),
                                scoring=ScoringConfig(drop=2, num_images=4, adaptor_steps=10),
                                latency=LatencyConfig(block_latency=latency),
                                finetune=FinetuneConfig(steps=0))
        compress(config, progress=False)
        runs.append(json.load(open(tmp_path / name / 'scores.json')))
    for run in runs:
        for s in run['scores']:
            s.pop('seconds')
    assert runs[0] == runs[1]


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_block_latency_file_errors(tmp_path, teacher_files):
    weights, _ = teacher_files
    bad = tmp_path / 'bad.json'
    bad.write_text(json.dumps({'blocks': {'layer1.1': {'saved_ms': 1.0, 'saved_pct': 1.0}}}))
    config = CompressConfig(model='timm:resnet18', weights=weights, output_dir=str(tmp_path / 'run'),
                            input_size=TEACHER_SIZE, images=ImagesConfig(num_images=4, heldout=2),
                            synthesis=SynthesisConfig(batch_size=4, steps=2), scoring=ScoringConfig(drop=1),
                            latency=LatencyConfig(block_latency=str(bad)), finetune=FinetuneConfig(steps=0))
    with pytest.raises(ValueError, match=r'has no latency for block\(s\) layer1\.0, layer2\.1.*--per-block'):
        compress(config, progress=False)
    assert not (tmp_path / 'run').exists(), 'checked before anything is written'
    bad.write_text('[1, 2]')
    with pytest.raises(ValueError, match='is not a per-block latency file'):
        compress(config, progress=False)


# Issue 7: interrupted runs, untouched inputs, determinism and failing ranks.
def test_a_run_json_reproduces_the_run(tmp_path, teacher_files):
    """`compress --config RUN/run.json --output-dir NEW` makes the same run again: the same blocks and, on the
    CPU, the same weights (block latency pinned with --block-latency, as live latency can change the choice)."""
    from practise_df.cli import main
    weights, latency = teacher_files
    first, second = tmp_path / 'first', tmp_path / 'second'
    assert main(compress_args(first, weights, latency) + ['--finetune-steps', '3', '--json']) == 0
    assert main(['compress', '--config', str(first / 'run.json'), '--output-dir', str(second), '--json']) == 0
    a, b = (json.load(open(d / 'run.json')) for d in (first, second))
    assert {**a, 'output_dir': None} == {**b, 'output_dir': None}
    assert json.load(open(first / 'scores.json'))['selected'] == json.load(open(second / 'scores.json'))['selected']
    x, y = (load_compressed(str(d / 'model')).state_dict() for d in (first, second))
    assert all(torch.equal(v, y[k]) for k, v in x.items())
