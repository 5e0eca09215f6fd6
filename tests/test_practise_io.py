"""practise_io, the I/O layer, as the commands use it (issues 15 and 28): a file or folder of the user's is never
taken as an output, --overwrite removes only what a practise-df run wrote, temporary and backup names never touch
a user's files, a full disk keeps the previous file and is one clear line, one run lock per output folder, files
get the user's umask, and no output may lie in place of an input. Commands run in-process through
``practise_df.cli.main`` on a tiny timm resnet18 (``MODEL``, ``TINY`` in conftest.py)."""
import errno
import json
import os
import shutil

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

import practise_df.checkpoint
from conftest import MODEL, TINY, cli, make_image_folder, run_settings
from practise_df import create_model, load_compressed, save_compressed
from practise_io import RunLock, write_json_atomic


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


# Issue 15: a user's file is never destroyed.
def test_score_overwrite_never_replaces_a_folder_that_is_not_a_model(capsys, no_long_work, images, users):
    folder, _ = users
    before = snapshot(folder)
    code, _, err = cli(capsys, 'score', *MODEL, '--data', images, '--drop', 1, '--output-dir', folder, '--overwrite')
    assert code == 2 and 'not a compressed model' in err
    assert snapshot(folder) == before


# Issue 15: a user's file is never destroyed.
def test_output_dir_naming_a_file_is_refused_and_the_file_not_renamed(capsys, no_long_work, images, users):
    _, file = users
    before = snapshot(file)
    code, _, err = cli(capsys, 'score', *MODEL, '--data', images, '--drop', 1, '--output-dir', file, '--overwrite')
    assert code == 2 and 'is a file' in err
    assert snapshot(file) == before  # no thesis.txt.old, no thesis.txt.tmp


# Issue 15: a user's file is never destroyed.
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


# Issue 15: a user's file is never destroyed.
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


# Issue 15: input the docs say is handled never crashes.
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


# Issue 15: input the docs say is handled never crashes.
def test_a_read_only_output_is_refused_up_front(capsys, no_long_work, images, read_only_dir):
    out = os.path.join(read_only_dir, 'run')
    for argv in (['compress', *MODEL, '--drop', 1, *TINY], ['synth', *MODEL, '--num-images', 2, '--synth-steps', 2],
                 ['score', *MODEL, '--data', images, '--drop', 1]):
        code, _, err = cli(capsys, *argv, '--output-dir', out)
        assert code == 2 and f"'{read_only_dir}' is not writable" in err, err
    assert not os.path.exists(out)


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# Issue 15: two runs, a failing rank and a full disk lose nothing.
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


# Issue 15: two runs, a failing rank and a full disk lose nothing.
def test_a_full_disk_is_a_clear_error(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(os, 'fsync', _enospc)
    code, _, err = cli(capsys, 'latency', *MODEL, '--repeats', 1, '--warmup', 0, '--output', tmp_path / 'lat.json')
    assert code == 2 and 'the disk is full' in err
    assert os.listdir(tmp_path) == []


# Issue 15: two runs, a failing rank and a full disk lose nothing.
def test_two_runs_on_one_directory_cannot_both_write(capsys, tmp_path):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'run.json').write_text(run_settings(out))
    (out / 'scores.json').write_text('{"selected": []}')  # the other run's work so far
    lock = RunLock(str(out)).acquire()
    try:
        before = snapshot(out / 'scores.json')
        code, _, err = cli(capsys, 'compress', *MODEL, '--drop', 1, *TINY, '--output-dir', out, '--overwrite')
        assert code == 2 and f'Another practise-df run (process {os.getpid()})' in err
        assert snapshot(out / 'scores.json') == before, '--overwrite removed the files of a run still writing'
    finally:
        lock.release()


# Issue 15: two runs, a failing rank and a full disk lose nothing.
@pytest.mark.parametrize('umask', [0o022, 0o077])
def test_model_files_get_the_mode_of_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        save_compressed(create_model('timm:resnet18', num_classes=4), str(tmp_path / 'model'))
    finally:
        os.umask(old)
    modes = {name: os.stat(tmp_path / 'model' / name).st_mode & 0o777 for name in ('model.safetensors', 'config.json')}
    assert modes == {'model.safetensors': 0o666 & ~umask, 'config.json': 0o666 & ~umask}


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
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


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
def test_overwrite_removes_only_what_a_run_wrote(capsys, no_long_work, tmp_path):
    out = tmp_path / 'run'
    (out / 'model').mkdir(parents=True)
    (out / 'run.json').write_text(run_settings(out))
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


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
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


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
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


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
@pytest.mark.parametrize('failure', [_safetensors_disk_full, _safetensors_short_write])
def test_a_full_disk_while_saving_the_model_is_one_clear_line(capsys, monkeypatch, tmp_path, images, failure):
    monkeypatch.setattr(practise_df.checkpoint, 'save_file', failure)
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *MODEL, '--blocks', 'layer4.1', *TINY, '--output-dir', out)
    assert code == 2 and 'the disk is full' in err
    assert not (out / 'dropped').exists() and not (out / 'model').exists()
    assert [f for f in os.listdir(out) if f.startswith('.') and f != RunLock.NAME] == []  # no temporary folder
