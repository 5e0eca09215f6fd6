"""Issue 15's promises, one test each: a user's file is never destroyed; input the docs say is handled never
crashes; every argument is checked before the long work starts; two runs, a failing rank and a full disk lose
nothing. Tiny models (timm resnet18 at 32 px, random weights) and generated files; commands run in-process
through ``practise_df.cli.main`` unless the promise is about a process (signals, launchers, the environment).
"""
import errno
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

import practise_df.checkpoint
import practise_df.export
import practise_df.robustness
from conftest import ROOT, accelerate_launch, cli, launch_log, make_image_folder
from practise_df import CompressConfig, create_model, load_compressed, resolve_data_config, save_compressed
from practise_df.cli.compress import render_report
from synth.data import ImageFolderDataset, decode_image, eval_transform
from practise_io import RunLock, write_json_atomic

PIPELINE = importlib.import_module('practise_df.pipeline')  # the module: the package exports the function too
MODEL = ['--model', 'timm:resnet18', '--input-size', '32']
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
# The cheapest compress run: 4 synthesized images, 2 steps, one block dropped, no finetuning.
TINY = ['--num-images', '4', '--heldout-images', '1', '--synth-batch-size', '2', '--synth-steps', '2',
        '--score-images', '2', '--adaptor-steps', '1', '--finetune-steps', '0', '--finetune-batch-size', '2',
        '--latency-batch-size', '1', '--latency-repeats', '1']


def snapshot(*paths):
    """Every file under ``paths`` with its bytes, and the names beside them (a FILE.old or FILE.tmp shows)."""
    state = {}
    for path in map(str, paths):
        parent = os.path.dirname(path)
        state[parent] = sorted(os.listdir(parent))
        walk = os.walk(path) if os.path.isdir(path) else [(parent, [], [os.path.basename(path)])]
        for root, dirs, files in walk:
            state[root + '/'] = sorted(dirs)
            state.update({os.path.join(root, f): open(os.path.join(root, f), 'rb').read() for f in files})
    return state


def boom(*args, **kwargs):
    raise AssertionError('the long work started before the arguments were checked')


LONG_WORK = {'practise_df.pipeline': 'drop_stage',  # images, scores and the drop: score's and compress's
             'synth.synthesize': 'synthesize_shard',
             'practise_df.scoring': 'score_blocks', 'practise_df.robustness': 'evaluate_robustness',
             'practise_df.cli.evaluate': 'evaluate_source', 'practise_df.cli.latency': 'model_latency_report',
             'practise_df.cli.export': 'export_model'}


@pytest.fixture
def no_long_work(monkeypatch):
    """Synthesis, scoring, evaluation, timing and export fail the test if they start."""
    for module, name in LONG_WORK.items():
        monkeypatch.setattr(importlib.import_module(module), name, boom)


@pytest.fixture(scope='module')
def images(tmp_path_factory):  # numbered class folders: labels a 1000-class model can be scored on
    return make_image_folder(str(tmp_path_factory.mktemp('data') / 'images'), classes=('0', '1'), per_class=3,
                             size=40)


@pytest.fixture
def users(tmp_path):
    """A folder and a file of the user's."""
    folder = tmp_path / 'u'
    (folder / '0000').mkdir(parents=True)
    Image.new('RGB', (8, 8), 'red').save(folder / '0000' / '00000000.png')  # looks like a synthesized image
    (folder / 'thesis.txt').write_text('four years of work')
    file = tmp_path / 'thesis.txt'
    file.write_text('four years of work')
    return folder, file


# --- data loss: never --------------------------------------------------------------------------------

def test_score_overwrite_never_replaces_a_folder_that_is_not_a_model(capsys, no_long_work, images, users):
    folder, _ = users
    before = snapshot(folder)
    code, _, err = cli(capsys, 'score', *MODEL, '--data', images, '--drop', 1, '--output-dir', folder, '--overwrite')
    assert code == 2 and 'not a compressed model' in err
    assert snapshot(folder) == before


def test_output_dir_naming_a_file_is_refused_and_the_file_not_renamed(capsys, no_long_work, images, users):
    _, file = users
    before = snapshot(file)
    code, _, err = cli(capsys, 'score', *MODEL, '--data', images, '--drop', 1, '--output-dir', file, '--overwrite')
    assert code == 2 and 'is a file' in err
    assert snapshot(file) == before  # no thesis.txt.old, no thesis.txt.tmp


def test_synth_never_writes_into_a_folder_of_the_user(capsys, no_long_work, users):
    folder, _ = users
    before = snapshot(folder)
    code, _, err = cli(capsys, 'synth', *MODEL, '--num-images', 2, '--output-dir', folder)
    assert code == 2 and 'not a synthesized set' in err
    assert snapshot(folder) == before


OUTPUT_COMMANDS = {  # the smallest arguments that reach each command's output check
    'score': (['score', *MODEL, '--data', '{images}', '--drop', '1'], '--output-dir'),
    'synth': (['synth', *MODEL, '--num-images', '2'], '--output-dir'),
    'compress': (['compress', *MODEL, '--drop', '1', *TINY], '--output-dir'),
    'latency': (['latency', *MODEL], '--output'),
    'eval': (['eval', *MODEL, '--data', '{images}'], '--output'),
    'robustness': (['robustness', *MODEL, '--data', '{images}'], '--output'),
    'robustness --heatmap': (['robustness', *MODEL, '--data', '{images}'], '--heatmap'),
    'export': (['export', *MODEL], '--output'),
}


@pytest.mark.parametrize('target', ['folder', 'file'])
@pytest.mark.parametrize('command', sorted(OUTPUT_COMMANDS))
def test_every_output_flag_refuses_a_file_or_folder_of_the_user(capsys, no_long_work, images, users, command,
                                                                target):
    argv, flag = OUTPUT_COMMANDS[command]
    folder, file = users
    path = folder if target == 'folder' else file
    # --overwrite never reaches a folder of the user's; a file given as --output is only replaced with it
    overwrite = ['--overwrite'] if target == 'folder' or flag == '--output-dir' else []
    before = snapshot(folder, file)
    code, _, err = cli(capsys, *[a.format(images=images) for a in argv], flag, path, *overwrite)
    assert code == 2 and 'error:' in err
    assert snapshot(folder, file) == before


# --- input the docs say is handled: no crash ------------------------------------------------------------

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


def test_a_16_bit_png_loads_with_its_scale(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    os.makedirs(tmp_path / 'folder' / 'a')
    path = str(tmp_path / 'folder' / 'a' / 'ramp.png')
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == 'I;16'
    for image in (decode_image(path), ImageFolderDataset(str(tmp_path / 'folder'))[0][0]):
        pixels = np.asarray(image)
        assert pixels.dtype == np.uint8 and abs(pixels.mean() - 127.5) < 1 and (pixels == 255).mean() < 0.01


def test_an_unknown_or_absent_device_is_an_argument_error(capsys):
    code, _, err = cli(capsys, 'latency', *MODEL, '--device', 'foo')
    assert code == 2 and "argument --device: 'foo' is not a device" in err
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, 'eval', *MODEL, '--data', '.', '--device', 'cuda')
        assert code == 2 and 'no CUDA GPU is visible' in err


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


def test_robustness_without_labels_or_teacher_says_so_before_evaluating(capsys, no_long_work, tmp_path):
    flat = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=4, size=40)
    code, _, err = cli(capsys, 'robustness', *MODEL, '--data', flat)
    assert code == 2 and 'no labels' in err and '--teacher' in err and 'KeyError' not in err


def test_robustness_output_naming_a_folder_is_refused_before_evaluating(capsys, no_long_work, images, tmp_path):
    code, _, err = cli(capsys, 'robustness', *MODEL, '--data', images, '--output', tmp_path)
    assert code == 2 and 'is a directory; name a file' in err


def test_an_output_dir_under_a_file_is_a_clear_error(capsys, no_long_work, images, users):
    _, file = users
    for argv in (['compress', *MODEL, '--drop', 1, *TINY], ['synth', *MODEL, '--num-images', 2],
                 ['score', *MODEL, '--data', images, '--drop', 1]):
        code, _, err = cli(capsys, *argv, '--output-dir', file / 'run')
        assert code == 2 and f"'{file}' is a file" in err
    assert file.read_text() == 'four years of work'


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder this process cannot write: chmod 0o555, or for root (whom chmod does not stop) /proc/1."""
    folder = tmp_path / 'read-only'
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if not os.access(folder, os.W_OK):
            yield folder
        elif not os.access('/proc/1', os.W_OK):
            yield '/proc/1'
        else:
            pytest.skip('no folder here is read-only for this user (root without a read-only /proc/1)')
    finally:
        folder.chmod(0o755)


def test_a_read_only_output_is_refused_up_front(capsys, no_long_work, images, read_only_dir):
    out = os.path.join(read_only_dir, 'run')
    for argv in (['compress', *MODEL, '--drop', 1, *TINY], ['synth', *MODEL, '--num-images', 2, '--synth-steps', 2],
                 ['score', *MODEL, '--data', images, '--drop', 1]):
        code, _, err = cli(capsys, *argv, '--output-dir', out)
        assert code == 2 and f"'{read_only_dir}' is not writable" in err, err
    assert not os.path.exists(out)


def _default_sigint():
    # A shell starts background jobs (pytest ... &) with SIGINT ignored, the child inherits that and Python then
    # never raises KeyboardInterrupt: give the child the default a terminal user has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_says_resume_continues(tmp_path):
    out = tmp_path / 'run'
    proc = subprocess.Popen([sys.executable, '-m', 'practise_df.cli', 'compress', *MODEL, '--drop', '1',
                             '--num-images', '64', '--synth-batch-size', '4', '--synth-steps', '400',
                             '--output-dir', str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV,
                            cwd=ROOT, text=True, preexec_fn=_default_sigint)
    deadline = time.time() + 120
    while not (out / 'synth' / 'synth_config.json').exists():  # synthesis has started
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert '--resume' in err and 'Traceback' not in err and 'KeyboardInterrupt' not in err


def test_a_heatmap_that_cannot_be_drawn_keeps_the_numbers(capsys, monkeypatch, images, tmp_path):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if matplotlib were not installed
    out = tmp_path / 'r.json'
    code, text, _ = cli(capsys, 'robustness', *MODEL, '--data', images, '--corruptions', 'fog', '--severities', 1,
                        '--output', out, '--heatmap', tmp_path / 'h.png')
    assert code == 0 and 'heatmap: not drawn' in text and 'matplotlib' in text
    saved = json.loads(out.read_text())
    assert saved['heatmap'].startswith('not drawn') and 'fog' in saved['corruptions']
    assert not (tmp_path / 'h.png').exists()


# --- every argument checked before the long work ---------------------------------------------------------

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


def test_crops_make_as_many_images_as_asked(images, tmp_path):
    config = CompressConfig(model='timm:resnet18', output_dir=str(tmp_path / 'run'), input_size=32,
                            images={'source': f'crops:{images}/0/0.png', 'num_images': 50}, scoring={'drop': 1})
    teacher = create_model('timm:resnet18')
    checked = PIPELINE.check_inputs(config, teacher, resolve_data_config(teacher, input_size=32))
    assert len(checked.pool) == 50 and not (tmp_path / 'run').exists()


def _synth_files(out):
    root = out / 'synth'
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob('*.png')}


def test_resume_takes_new_settings_of_unfinished_stages_only(capsys, monkeypatch, tmp_path, images):
    out = tmp_path / 'run'
    argv = ['compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out]

    def fail(*args, **kwargs):
        raise ValueError('injected failure as finetuning starts')
    monkeypatch.setattr(PIPELINE, 'finetune', fail)
    code, _, err = cli(capsys, *argv, '--finetune-steps', 2)
    assert code == 2 and 'injected' in err
    monkeypatch.undo()
    synthesized = _synth_files(out)
    code, _, err = cli(capsys, *argv, '--resume', '--num-images', 6)  # the images are finished
    assert code == 2 and 'images.num_images' in err
    code, out_text, _ = cli(capsys, *argv, '--resume', '--finetune-steps', 1, '--eval-data', images, '--json')
    assert code == 0 and json.loads(out_text)['finetune']['steps'] == 1 and 'eval' in json.loads(out_text)
    assert _synth_files(out) == synthesized, 'the images were synthesized again'


def test_a_run_stopped_by_a_bad_argument_restarts_without_overwrite(capsys, tmp_path, images):
    out = tmp_path / 'run'
    argv = ['compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out]
    code, _, err = cli(capsys, *argv, '--eval-data', tmp_path / 'missing')
    assert code == 2 and not out.exists()
    out.mkdir()  # a run stopped after writing only its settings did no work either
    (out / 'run.json').write_text(_run_settings(out, seed=7))  # other settings
    code, _, err = cli(capsys, *argv, '--eval-data', images)
    assert code == 0, err


def test_latency_refuses_a_name_that_is_not_a_block(capsys):
    code, _, err = cli(capsys, 'latency', *MODEL, '--per-block', '--blocks', 'layer1.1,fc')
    assert code == 2 and 'Not droppable: fc' in err


def test_batch_size_zero_is_refused(capsys, images):
    for argv in (['latency', *MODEL, '--batch-size', 0],
                 ['score', *MODEL, '--data', images, '--latency-batch-size', 0]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and 'must be at least 1, got 0' in err


RANDOM_WEIGHTS = {  # every command taking --weights (and the other models' weights flags)
    'blocks': ['blocks'],
    'latency': ['latency', '--repeats', '1', '--warmup', '0'],
    'score': ['score', '--data', '{images}', '--train-images', '4', '--heldout-images', '2', '--adaptor-steps', '1',
              '--candidates', 'layer4.1', '--latency-repeats', '1'],
    'eval': ['eval', '--data', '{images}', '--repeats', '1', '--teacher', 'timm:resnet18', '--teacher-weights',
             'random'],
    'robustness': ['robustness', '--data', '{images}', '--corruptions', 'fog', '--severities', '1', '--teacher',
                   'timm:resnet18', '--teacher-weights', 'random'],
    'synth': ['synth', '--num-images', '2', '--batch-size', '2', '--synth-steps', '2', '--output-dir', '{tmp}/s',
              '--student', 'timm:resnet18', '--student-weights', 'random'],
    'compress': ['compress', '--drop', '1', *TINY, '--output-dir', '{tmp}/c'],
    'export': ['export', '--format', 'torch-export', '--output', '{tmp}/m.pt2'],
}


@pytest.mark.parametrize('command', sorted(RANDOM_WEIGHTS))
def test_weights_random_works_in_every_command(capsys, tmp_path, images, command):
    argv = [a.format(images=images, tmp=tmp_path) for a in RANDOM_WEIGHTS[command]]
    code, _, err = cli(capsys, argv[0], *MODEL, '--weights', 'random', *argv[1:])
    assert code == 0, err


def test_weights_of_another_architecture_name_the_mismatch(capsys, tmp_path):
    path = tmp_path / 'resnet34.safetensors'
    save_file(create_model('timm:resnet34').state_dict(), str(path))
    code, _, err = cli(capsys, 'blocks', *MODEL, '--weights', path)
    assert code == 2 and 'layer1.2' in err and 'include []' not in err and 'do not fit' in err


@pytest.mark.parametrize('network', ['HF_HUB_OFFLINE=1', 'hub unreachable'])
def test_a_recipe_without_network_fails_at_once_and_leaves_nothing(tmp_path, network):
    env = {k: v for k, v in ENV.items() if k.upper() not in ('HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE', 'HTTPS_PROXY',
                                                             'HTTP_PROXY', 'ALL_PROXY')}
    env['HF_HUB_CACHE'] = str(tmp_path / 'hub-cache')  # nothing cached
    if network == 'HF_HUB_OFFLINE=1':
        env['HF_HUB_OFFLINE'] = '1'
    else:  # a Hub that refuses connections: huggingface_hub alone retries it ~50 s
        env['HF_ENDPOINT'] = 'http://127.0.0.1:9'
    out = tmp_path / 'run'
    start = time.time()
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'recipes', 'datafree_resnet50.py'), '--output-dir',
                           str(out)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and 'Cannot fetch the pretrained weights' in proc.stderr
    assert '--weights FILE' in proc.stderr and 'Traceback' not in proc.stderr
    assert time.time() - start < 30
    assert not out.exists() and not (tmp_path / 'runs').exists()


def test_data_naming_a_file_says_it_is_a_file(capsys, images, users):
    _, file = users
    for path in (file, os.path.join(images, '0', '0.png')):
        for command in ('eval', 'robustness'):
            code, _, err = cli(capsys, command, *MODEL, '--data', path)
            assert code == 2 and f"'{path}' is a file" in err and 'folder of images' in err
            assert 'does not exist' not in err


# --- concurrency and disk -------------------------------------------------------------------------------

@pytest.mark.parametrize('stage', ['scoring', 'finetune'])
def test_a_failing_main_process_ends_the_job(tmp_path, stage):
    """Rank 0 fails while rank 1 waits for it (scoring runs on the main process only) or works beside it."""
    (tmp_path / 'audit').mkdir()
    args = [tmp_path / 'audit', '--crash-rank', 0, '--crash-in', stage, '--', *MODEL, '--drop', 1, *TINY,
            '--num-images', 8, '--finetune-steps', 2, '--output-dir', tmp_path / 'run']
    # rank 1 left waiting for the failed main process would keep the launch running past the timeout: a failure
    proc = accelerate_launch('tests/scripts/compress_ranks.py', args, timeout=150, env={'OMP_NUM_THREADS': '1'})
    assert proc.returncode != 0 and 'injected failure on rank 0' in proc.stderr, launch_log(proc)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_file_and_leaves_no_partial_one(monkeypatch, tmp_path):
    path = tmp_path / 'settings.json'
    write_json_atomic(str(path), {'version': 1})
    model = create_model('timm:resnet18', num_classes=4)
    save_compressed(model, str(tmp_path / 'model'))

    def half_then_full(state, filename, **kwargs):
        open(filename, 'wb').write(b'half a model')
        _enospc()
    monkeypatch.setattr(os, 'fsync', _enospc)
    monkeypatch.setattr(practise_df.checkpoint, 'save_file', half_then_full)
    with pytest.raises(OSError, match='No space left'):
        write_json_atomic(str(path), {'version': 2})
    with pytest.raises(OSError, match='No space left'):
        save_compressed(model, str(tmp_path / 'model'), overwrite=True)
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {'version': 1}
    load_compressed(str(tmp_path / 'model'))
    assert sorted(os.listdir(tmp_path)) == ['model', 'settings.json']  # no .tmp, no .old


def test_a_full_disk_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, 'fsync', _enospc)
    code, _, err = cli(capsys, 'latency', *MODEL, '--repeats', 1, '--warmup', 0, '--output', tmp_path / 'lat.json')
    assert code == 2 and 'the disk is full' in err
    assert os.listdir(tmp_path) == []


def test_two_runs_on_one_directory_cannot_both_write(capsys, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'run.json').write_text(_run_settings(out))
    (out / 'scores.json').write_text('{"selected": []}')  # the other run's work so far
    lock = RunLock(str(out)).acquire()
    try:
        before = snapshot(out / 'scores.json')
        code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out, '--overwrite')
        assert code == 2 and f'Another practise-df run (process {os.getpid()})' in err
        assert snapshot(out / 'scores.json') == before, '--overwrite removed the files of a run still writing'
    finally:
        lock.release()


@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_model_files_get_the_mode_of_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_compressed(create_model('timm:resnet18', num_classes=4), str(tmp_path / 'model'))
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / 'model' / name).st_mode & 0o777 for name in ('model.safetensors', 'config.json')}
    assert modes == {'model.safetensors': 0o666 & ~umask, 'config.json': 0o666 & ~umask}


# --- issue 28: a run folder is known by its content; outputs never in place of inputs ------------------------

def _run_settings(out, **changes):
    """What compress writes as run.json (the settings of a run on ``out``)."""
    config = CompressConfig(model='timm:resnet18', output_dir=str(out), input_size=32, scoring={'drop': 1},
                            **changes)
    return json.dumps(config.to_dict())


def test_a_users_run_json_does_not_make_a_folder_a_run(capsys, no_long_work, tmp_path):
    out = tmp_path / 'u'
    (out / 'model').mkdir(parents=True)
    (out / 'checkpoints').mkdir()
    (out / 'run.json').write_text('{"tool": "mine"}')
    (out / 'model' / 'best.pt').write_text('w')
    (out / 'checkpoints' / 'epoch1.pt').write_text('w')
    before = snapshot(out)
    code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out, '--overwrite')
    assert code == 2 and 'not a practise-df run' in err
    assert snapshot(out) == before
    for name in ('model', 'checkpoints'):
        shutil.rmtree(out / name)
    before = snapshot(out)  # only the user's run.json: not "a run that wrote only its settings"
    code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out)
    assert code == 2 and 'not a practise-df run' in err
    assert snapshot(out) == before


def test_overwrite_removes_only_what_a_run_wrote(capsys, no_long_work, tmp_path):
    out = tmp_path / 'run'
    (out / 'model').mkdir(parents=True)
    (out / 'run.json').write_text(_run_settings(out))
    (out / 'scores.json').write_text('{"selected": []}')
    (out / 'model' / 'best.pt').write_text('a model of the user, put into a run folder')
    before = snapshot(out)
    code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out, '--overwrite')
    assert code == 2 and 'model is not what a practise-df run writes' in err
    assert snapshot(out) == before


INPUT_AS_OUTPUT = {  # an output that is, or lies inside, an input of the same command
    'robustness --output the weights': (['robustness', *MODEL, '--weights', '{w}', '--data', '{images}',
                                         '--output', '{w}'], '--weights'),
    'export --output into the model folder': (['export', '--model', '{model}', '--output', '{model}/model.safetensors'],
                                              '--model'),
    'eval --output over an image': (['eval', *MODEL, '--data', '{images}', '--output', '{images}/a/0.png'], '--data'),
    'eval --output over the teacher': (['eval', *MODEL, '--data', '{images}', '--teacher', '{model}',
                                        '--output', '{model}/config.json'], '--teacher'),
    'score --output-dir inside the images': (['score', *MODEL, '--images', '{images}', '--drop', '1',
                                              '--output-dir', '{images}/run'], '--images'),
    'export --output over calibration images': (['export', *MODEL, '--quantize', 'int8', '--calibration', '{images}',
                                                 '--output', '{images}/a/0.png'], '--calibration'),
    'compress --output-dir inside --eval-data': (['compress', *MODEL, '--drop', '1', *TINY, '--eval-data', '{images}',
                                                  '--output-dir', '{images}/run'], '--eval-data'),
    'compress --output-dir inside --images': (['compress', *MODEL, '--drop', '1', *TINY, '--images', 'crops:{images}',
                                               '--output-dir', '{images}/a/run'], '--images'),
    'compress --output-dir holding --weights': (['compress', *MODEL, '--drop', '1', *TINY, '--weights', '{w}',
                                                 '--output-dir', '{tmp}'], '--weights'),
    'compress --output-dir inside --guard-images': (['compress', *MODEL, '--drop', '1', *TINY, '--guard-images',
                                                     '{images}/a', '--output-dir', '{images}/a/run'], '--guard-images'),
}


@pytest.mark.parametrize('case', sorted(INPUT_AS_OUTPUT))
def test_an_output_in_place_of_an_input_is_refused_even_with_overwrite(capsys, no_long_work, tmp_path, case):
    argv, flag = INPUT_AS_OUTPUT[case]
    images = make_image_folder(str(tmp_path / 'images'), per_class=2, size=40)
    model = str(tmp_path / 'model')
    save_compressed(create_model('timm:resnet18', num_classes=4), model)
    w = tmp_path / 'w.pth'
    torch.save(create_model('timm:resnet18').state_dict(), w)
    before = snapshot(tmp_path)
    code, _, err = cli(capsys, *[a.format(w=w, images=images, model=model, tmp=tmp_path) for a in argv],
                       '--overwrite')
    assert code == 2 and flag in err and 'refused' in err, err
    assert snapshot(tmp_path) == before


def test_temporary_and_backup_names_never_touch_a_users_files(tmp_path):
    model = create_model('timm:resnet18', num_classes=4)
    save_compressed(model, str(tmp_path / 'X'))
    for name in ('X.tmp', 'X.old'):  # folders of the user's that carry the names a save once used
        (tmp_path / name).mkdir()
        (tmp_path / name / 'notes.txt').write_text('mine')
    (tmp_path / 'res.json.tmp').write_text('mine too')
    users = [tmp_path / 'X.tmp', tmp_path / 'X.old', tmp_path / 'res.json.tmp']
    before = snapshot(*users)
    save_compressed(model, str(tmp_path / 'X'), overwrite=True)
    write_json_atomic(str(tmp_path / 'res.json'), {'top1': 1.0})
    after = snapshot(*users)
    assert {k: v for k, v in after.items() if k != str(tmp_path)} == \
        {k: v for k, v in before.items() if k != str(tmp_path)}
    assert sorted(os.listdir(tmp_path)) == ['X', 'X.old', 'X.tmp', 'res.json', 'res.json.tmp']


def _safetensors_disk_full(state, filename, **kwargs):
    open(filename, 'wb').write(b'half a model')
    raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                          'left on device" })')


def _safetensors_short_write(state, filename, **kwargs):
    """safetensors ignores some failed writes (its buffered writer's last flush): the file is cut short."""
    save_file(state, filename, **kwargs)
    data = open(filename, 'rb').read()
    open(filename, 'wb').write(data[:len(data) // 2])


@pytest.mark.parametrize('failure', [_safetensors_disk_full, _safetensors_short_write])
def test_a_full_disk_while_saving_the_model_is_one_clear_line(capsys, monkeypatch, tmp_path, images, failure):
    monkeypatch.setattr(practise_df.checkpoint, 'save_file', failure)
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *MODEL, '--blocks', 'layer4.1', *TINY, '--output-dir', out)
    assert code == 2 and 'the disk is full' in err
    assert not (out / 'dropped').exists() and not (out / 'model').exists()
    assert [f for f in os.listdir(out) if f.startswith('.') and f != RunLock.NAME] == []  # no temporary folder


def test_a_truncated_compressed_model_is_one_clear_line(capsys, images, tmp_path):
    model = str(tmp_path / 'model')
    save_compressed(create_model('timm:resnet18', num_classes=4), model)
    weights = os.path.join(model, 'model.safetensors')
    open(weights, 'r+b').truncate(os.path.getsize(weights) // 2)
    code, _, err = cli(capsys, 'eval', '--model', model, '--data', images)
    assert code == 2 and 'damaged' in err and 'model.safetensors' in err


def test_export_checks_atol_and_data_before_exporting(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(practise_df.export, 'export_onnx', boom)
    monkeypatch.setattr(practise_df.export, 'export_torch', boom)
    (tmp_path / 'empty').mkdir()
    out = tmp_path / 'm.onnx'
    code, _, err = cli(capsys, 'export', *MODEL, '--output', out, '--atol', -1)
    assert code == 2 and 'argument --atol: must be at least 0, got -1' in err
    code, _, err = cli(capsys, 'export', *MODEL, '--output', out, '--data', tmp_path / 'empty')
    assert code == 2 and 'No readable image' in err
    assert os.listdir(tmp_path) == ['empty']


def test_a_model_folder_that_does_not_exist_is_named_as_missing(capsys, images, tmp_path):
    code, _, err = cli(capsys, 'eval', '--model', tmp_path / 'out' / 'm5dir', '--data', images)
    assert code == 2 and f"'{tmp_path / 'out' / 'm5dir'}' does not exist" in err and 'Unknown timm' not in err


def test_the_robustness_summary_never_prints_a_percent_of_nothing():
    cell = {'top1': 100.0, 'teacher_top1': 100.0, 'agreement': 100.0}
    result = {'images': 2, 'severities': [1], 'clean': cell, 'corruptions': {'fog': {'1': cell}},
              'summary': {'ce': {'fog': None}, 'mce': None, 'relative_mce': None, 'mean_corruption_top1': 100.0,
                          'teacher_mean_corruption_top1': 100.0}}
    text = practise_df.robustness.robustness_table(result)
    assert 'n/a%' not in text and 'relative mCE: n/a' in text and 'the teacher makes no error' in text


# --- issue 28: what a run says about itself ---------------------------------------------------------------

def test_a_model_with_random_weights_where_they_matter_is_warned_about(capsys, images):
    argv = ['eval', *MODEL, '--weights', 'random', '--data', images, '--repeats', 1, '--batch-size', 2,
            '--teacher', 'timm:resnet18']
    code, text, err = cli(capsys, *argv)
    assert code == 0 and err.count('warning:') == 1
    assert '--teacher timm:resnet18 has no --teacher-weights, so it is built with random weights' in err
    assert 'timm:resnet18 (teacher)' in text  # the teacher's row beside the model's
    code, _, err = cli(capsys, *argv, '--teacher-weights', 'random')  # random on purpose
    assert code == 0 and 'warning:' not in err
    code, _, err = cli(capsys, 'latency', *MODEL, '--repeats', 1, '--warmup', 0)  # timing: weights do not matter
    assert code == 0 and 'warning:' not in err


def test_a_run_without_finetuning_says_so_and_claims_no_recovery(capsys, tmp_path):
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *MODEL, '--blocks', 'layer4.1', *TINY, '--output-dir', out)
    assert code == 0, err
    assert [line[:5] for line in err.splitlines() if line.startswith('[')] == \
        ['[1/5]', '[2/5]', '[3/5]', '[4/5]', '[5/5]']
    assert '[4/5] finetuning: skipped' in err and '--model timm:resnet18 has no --weights' in err
    card = (out / 'model' / 'README.md').read_text()
    assert 'not finetuned' in card and 'recover' not in card.split('## Use')[0]


# --- issue 28: labels that cannot be the model's are never scored as if they were -----------------------------

def test_imagenet_wnid_folders_are_labelled_with_the_models_class_indices(capsys, tmp_path):
    model = create_model('timm:resnet18')  # 1000 ImageNet classes, random weights saved so eval rebuilds them
    torch.save(model.state_dict(), tmp_path / 'w.pth')
    flat = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=6, size=40)
    dataset = ImageFolderDataset(flat, eval_transform(resolve_data_config(model, input_size=32)))
    with torch.no_grad():
        predicted = model(torch.stack([dataset[i][0] for i in range(len(dataset))])).argmax(1).tolist()
    wnids = timm.data.ImageNetInfo('imagenet-1k').label_names()
    for (path, _), label in zip(dataset.samples, predicted):  # each image in the folder of the class predicted
        os.makedirs(tmp_path / 'subset' / wnids[label], exist_ok=True)
        shutil.copy(path, tmp_path / 'subset' / wnids[label])
    code, out, err = cli(capsys, 'eval', *MODEL, '--weights', tmp_path / 'w.pth', '--data', tmp_path / 'subset',
                         '--repeats', 1, '--batch-size', 2, '--json')
    assert code == 0, err
    assert json.loads(out)['top1'] == 100.0  # by sorted folder index it would be ~0


def test_folders_that_cannot_be_the_models_classes_give_agreement_only(capsys, caplog, tmp_path):
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b'), per_class=2, size=40)
    argv = ['eval', *MODEL, '--weights', 'random', '--data', images, '--repeats', 1, '--batch-size', 2,
            '--teacher', 'timm:resnet18', '--teacher-weights', 'random', '--json']
    code, out, err = cli(capsys, *argv)  # 2 class folders a and b, a 1000-class model
    result = json.loads(out)
    assert code == 0 and 'top1' not in result and 'agreement' in result
    said = [r.message for r in caplog.records if 'cannot be matched to the model' in r.message]
    assert len(said) == 1 and 'the 2 class folder(s)' in result['labels']
