"""practise_df.models: model specs for a customer's own model, through every command (issue 29). A timm test
model finetuned to 5 classes (a state dict, a timm folder written by ``save_for_hf``, a timm ``train.py``
checkpoint with its ``args.yaml``), a network of the customer's own code (``tests/own_network.py`` through
``py:``), a model changed after it was built (refused at save, nothing written), and the bad input of each: one
clear line, before any work.
"""
import argparse
import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn as nn
import yaml

import practise_df
import practise_df.checkpoint
from conftest import ROOT, cli, make_image_folder, randomize_norms
from practise_df import (CompressConfig, ScoringConfig, create_model, export_model, load_compressed, load_model,
                         resolve_data_config, save_compressed, score_blocks)
from practise_df.scoring import ESTIMATORS

OWN = os.path.join(ROOT, 'tests', 'own_network.py')
# The cheapest compress run: 4 synthesized images at 32 px, 2 steps, one block dropped, 2 finetuning steps.
TINY = ['--input-size', '32', '--drop', '1', '--num-images', '4', '--heldout-images', '1', '--synth-batch-size', '2',
        '--synth-steps', '2', '--score-images', '2', '--adaptor-steps', '1', '--finetune-steps', '2',
        '--finetune-batch-size', '2', '--latency-batch-size', '1', '--latency-repeats', '1', '--no-guard']


def finetuned(num_classes=5, seed=0):
    """A timm test model as a customer finetuned it: another class count, trained weights."""
    torch.manual_seed(seed)
    return randomize_norms(timm.create_model('test_resnet', num_classes=num_classes), seed).eval()


def outputs(model, size=32):
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def ft5_file(tmp_path):
    model = finetuned()
    path = tmp_path / 'ft5.pth'
    torch.save(model.state_dict(), path)
    return str(path), model


def test_a_finetuned_state_dict_builds_with_the_files_class_count_and_says_so(ft5_file, caplog):
    path, model = ft5_file
    with caplog.at_level(logging.WARNING):
        built = create_model('timm:test_resnet', weights=path)
    assert built.num_classes == 5 and built.practise_df_source == {'model': 'timm:test_resnet',
                                                                   'kwargs': {'num_classes': 5}}
    assert torch.equal(outputs(built), outputs(model))
    said = [r.getMessage() for r in caplog.records if 'class' in r.getMessage()]
    assert len(said) == 1 and '5-class classifier' in said[0] and 'num_classes=5' in said[0]
    # a class count given that the file contradicts is an error, not a silent re-build
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(5, 96\).*--num-classes"):
        create_model('timm:test_resnet', weights=path, num_classes=7)
    # another architecture is still refused (not mistaken for a class count)
    with pytest.raises(ValueError, match='do not fit this architecture'):
        create_model('timm:resnet18', weights=path)


def test_a_finetuned_timm_model_through_compress_eval_export_and_back(tmp_path, capsys, caplog, ft5_file):
    path, teacher = ft5_file
    out = tmp_path / 'run'
    with caplog.at_level(logging.WARNING):
        code, _, err = cli(capsys, 'compress', '--model', 'timm:test_resnet', '--weights', path, *TINY,
                           '--mean', '0.1', '0.2', '0.3', '--std', '0.3', '0.3', '0.3', '--output-dir', out)
    assert code == 0, err
    assert any('5-class classifier' in r.getMessage() for r in caplog.records)
    run = json.load(open(out / 'run.json'))
    assert run['mean'] == [0.1, 0.2, 0.3] and run['std'] == [0.3, 0.3, 0.3] and run['num_classes'] is None
    # --mean/--std reach the synthesized images, and the compressed model carries them
    synth = json.load(open(out / 'synth' / 'synth_config.json'))
    assert synth['mean'] == [0.1, 0.2, 0.3] and synth['std'] == [0.3, 0.3, 0.3]
    saved = json.load(open(out / 'model' / 'config.json'))
    assert saved['source'] == {'model': 'timm:test_resnet', 'kwargs': {'num_classes': 5}}
    assert saved['data_config']['mean'] == [0.1, 0.2, 0.3] and saved['data_config']['input_size'] == [3, 32, 32]
    student = load_compressed(str(out / 'model'))
    assert outputs(student).shape == (2, 5)
    assert resolve_data_config(student)['std'] == (0.3, 0.3, 0.3)

    data = make_image_folder(str(tmp_path / 'val'), classes=('a', 'b', 'c', 'd', 'e'), per_class=1, size=40)
    code, stdout, err = cli(capsys, 'eval', '--model', out / 'model', '--data', data, '--teacher', 'timm:test_resnet',
                            '--teacher-weights', path, '--repeats', '1', '--json')
    assert code == 0, err
    assert json.loads(stdout)['images'] == 5
    code, stdout, err = cli(capsys, 'export', '--model', out / 'model', '--output', tmp_path / 's.onnx', '--json')
    assert code == 0, err
    exported = json.loads(stdout)
    assert exported['metadata']['num_classes'] == 5 and exported['metadata']['mean'] == [0.1, 0.2, 0.3]


def test_a_timm_folder_written_by_save_for_hf(tmp_path, capsys):
    model = finetuned()
    folder = tmp_path / 'customer-model'
    timm.models.save_for_hf(model, str(folder), safe_serialization=True,
                            data_config={'mean': (0.2, 0.2, 0.2), 'std': (0.25, 0.25, 0.25), 'crop_pct': 0.8})
    built = load_model(f'local-dir:{folder}')
    assert torch.equal(outputs(built), outputs(model))  # its own weights, no --weights
    assert built.practise_df_source['model'] == 'timm:test_resnet'
    config = resolve_data_config(built)
    assert config['mean'] == (0.2, 0.2, 0.2) and config['crop_pct'] == 0.8
    with pytest.raises(ValueError, match=f"is a timm model folder.*pass it as local-dir:{folder}"):
        load_model(str(folder))  # without timm's prefix
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', '--model', f'local-dir:{folder}', *TINY, '--output-dir', out)
    assert code == 0, err
    assert json.load(open(out / 'synth' / 'synth_config.json'))['mean'] == [0.2, 0.2, 0.2]
    saved = json.load(open(out / 'model' / 'config.json'))
    assert saved['source']['model'] == 'timm:test_resnet' and saved['source']['kwargs']['num_classes'] == 5
    assert saved['data_config']['crop_pct'] == 0.8
    assert outputs(load_compressed(str(out / 'model'))).shape == (2, 5)
    # the folder is not needed to load the compressed model
    folder.rename(tmp_path / 'moved')
    assert outputs(load_compressed(str(out / 'model'))).shape == (2, 5)


def test_a_timm_train_checkpoint_reads_args_yaml_beside_it(tmp_path):
    model = finetuned()
    run = tmp_path / 'output' / 'train' / '20261207-test_resnet'
    run.mkdir(parents=True)
    args = {'model': 'test_resnet', 'num_classes': 5, 'input_size': [3, 48, 48], 'mean': [0.4, 0.4, 0.4],
            'std': [0.2, 0.2, 0.2], 'interpolation': 'bicubic', 'crop_pct': 0.9, 'gp': None, 'model_kwargs': {}}
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    torch.save({'epoch': 3, 'arch': 'test_resnet', 'state_dict': model.state_dict(), 'version': 2,
                'args': argparse.Namespace(**args)}, run / 'model_best.pth.tar')  # as timm's CheckpointSaver
    built = create_model('timm:test_resnet', weights=str(run / 'model_best.pth.tar'))
    assert torch.equal(outputs(built), outputs(model))
    config = resolve_data_config(built)
    assert config['input_size'] == (3, 48, 48) and config['mean'] == (0.4, 0.4, 0.4)
    assert config['interpolation'] == 'bicubic' and config['crop_pct'] == 0.9
    with pytest.raises(ValueError, match=r"args.yaml' says this checkpoint is a test_resnet.*--model timm:test_resnet"):
        create_model('timm:resnet18', weights=str(run / 'model_best.pth.tar'))


def test_your_own_network_through_compress_and_back_in_a_fresh_process(tmp_path, capsys):
    out = tmp_path / 'run'
    spec = f'py:{os.path.relpath(OWN)}:tiny_net'
    code, _, err = cli(capsys, 'compress', '--model', spec, '--num-classes', '3', '--model-kwargs', '{"width": 6}',
                       *TINY, '--output-dir', out)
    assert code == 0, err
    run = json.load(open(out / 'run.json'))
    assert run['num_classes'] == 3 and run['model_kwargs'] == {'width': 6}
    saved = json.load(open(out / 'model' / 'config.json'))
    assert saved['source'] == {'model': f'py:{OWN}:tiny_net', 'kwargs': {'width': 6, 'num_classes': 3}}
    assert len(saved['dropped_blocks']) == 1 and saved['dropped_blocks'][0].startswith('stages.')
    here = outputs(load_compressed(str(out / 'model')))
    assert here.shape == (2, 3)
    torch.save(here, tmp_path / 'here.pt')
    script = ('import sys, torch, practise_df\n'
              'model = practise_df.load_compressed(sys.argv[1]).eval()\n'
              'x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))\n'
              'with torch.no_grad():\n'
              '    assert torch.equal(model(x), torch.load(sys.argv[2])), "another network"\n'
              'print(type(model).__name__)\n')
    proc = subprocess.run([sys.executable, '-c', script, str(out / 'model'), str(tmp_path / 'here.pt')],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # another directory
    assert proc.returncode == 0 and proc.stdout.strip() == 'TinyNet', proc.stderr[-2000:]
    # without the factory's file, the error says which file the model needs
    saved['source']['model'] = f'py:{tmp_path}/gone.py:tiny_net'
    (out / 'model' / 'config.json').write_text(json.dumps(saved))
    with pytest.raises(FileNotFoundError, match=r"built by the function py:.*gone.py:tiny_net.*gone.py' does not "
                                                r"exist"):
        load_compressed(str(out / 'model'))


def test_a_model_changed_after_construction_is_refused_at_save_and_nothing_is_written(tmp_path):
    model = create_model('timm:test_resnet', num_classes=5)
    randomize_norms(model)
    model.maxpool = nn.Identity()  # the case: a module replaced after the model was built
    path = tmp_path / 'student'
    with pytest.raises(ValueError, match=r'Refused to save: rebuilding timm:test_resnet .* gives other outputs.*'
                                         r'replaced after the model was built.*py:FILE.py:FUNCTION.*Nothing was '
                                         r'written'):
        save_compressed(model, str(path))
    assert os.listdir(tmp_path) == []
    # a changed module with other parameters is refused the same way
    model.fc = nn.Linear(96, 7)
    with pytest.raises(ValueError, match='Refused to save: rebuilding timm:test_resnet does not give this model'):
        save_compressed(model, str(path))
    assert os.listdir(tmp_path) == []
    # compress refuses such a teacher before any work
    config = CompressConfig(model='changed test_resnet', output_dir=str(tmp_path / 'run'), input_size=32,
                            scoring=ScoringConfig(drop=1))
    with pytest.raises(ValueError, match='Refused to save'):
        practise_df.compress(config, teacher=model)
    assert os.listdir(tmp_path) == []


def test_the_python_api_takes_a_module_built_in_code(tmp_path):
    teacher = finetuned()  # timm.create_model, not practise_df: rebuilt from its architecture and class count
    config = CompressConfig(model='my finetuned test_resnet', output_dir=str(tmp_path / 'run'), input_size=32,
                            scoring=ScoringConfig(drop=1))
    config.images.num_images, config.images.heldout = 4, 1
    config.synthesis.steps, config.synthesis.batch_size = 2, 2
    config.scoring.num_images, config.scoring.adaptor_steps = 2, 1
    config.finetune.steps, config.latency.repeats, config.latency.batch_size = 0, 1, 1
    report = practise_df.compress(config, teacher=teacher, progress=False)
    assert report['model'] == 'my finetuned test_resnet'
    student = load_compressed(report['compressed_model'])
    assert student.num_classes == 5
    images = torch.randn(4, 3, 32, 32)
    own = load_model(f'py:{OWN}:tiny_net')  # scoring and export take any module
    fast = dataclasses.replace(ESTIMATORS['fast'], steps=1)
    scores = score_blocks(own, images[:2], images[2:], settings=fast, progress=False,
                          latency_kwargs={'input_size': (3, 32, 32), 'batch_size': 1, 'repeats': 1})
    assert [s.block for s in scores] and all(s.block.startswith('stages.') for s in scores)
    result = export_model(own, str(tmp_path / 'own.onnx'),
                          data_config={'input_size': (3, 32, 32), 'mean': (0.5,) * 3, 'std': (0.5,) * 3})
    assert os.path.isfile(result['output'])
    # a network that says nothing of how it was built is refused before any work, naming the fix
    with pytest.raises(ValueError, match=r"create_model\('py:FILE.py:FUNCTION'\)"):
        practise_df.compress(config, teacher=nn.Sequential(nn.Conv2d(3, 3, 1)), overwrite=True)


@pytest.mark.parametrize('flags, message', [
    (['--model', 'py:missing.py:tiny_net'], r"py:missing.py:tiny_net: the file '.*missing.py' does not exist"),
    (['--model', 'py:no_such_package.models:build'], r"no module named 'no_such_package'. Install the package"),
    (['--model', f'py:{OWN}:nothing'], r"has no function 'nothing' \(it defines: .*tiny_net"),
    (['--model', f'py:{OWN}:not_a_network'], r'returned a dict, not a torch.nn.Module'),
    (['--model', f'py:{OWN}'], r'is not a model factory; write py:FILE.py:FUNCTION'),
    (['--model', 'timm:test_resnet', '--model-kwargs', '{"width": 3'], r"--model-kwargs: is not valid JSON"),
    (['--model', 'timm:test_resnet', '--model-kwargs', '[1, 2]'], r'--model-kwargs: must be a JSON object'),
    (['--model', 'timm:test_resnet', '--model-kwargs', '{"bogus_arg": 1}'],
     r'timm:test_resnet does not take the model argument\(s\) \{"bogus_arg": 1\}.*bogus_arg'),
    (['--model', f'py:{OWN}:tiny_net', '--num-classes', '0'], r'--num-classes: must be at least 1'),
    (['--model', 'timm:test_resnet', '--mean', '0.5', '0.5'], r'mean \(0.5, 0.5\) has 2 value\(s\) but the model '
                                                              r'takes 3 input channel'),
])
def test_bad_model_input_is_one_line_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / 'run'
    code, _, err = cli(capsys, 'compress', *flags, *TINY, '--output-dir', out)
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert __import__('re').search(message, line), err
    assert not out.exists()  # nothing written, nothing started


def test_hf_hub_is_a_compressed_model_or_a_timm_model_by_its_config(tmp_path, monkeypatch, tiny_resnet):
    compressed = save_compressed(tiny_resnet, str(tmp_path / 'compressed'), data_config=resolve_data_config(
        tiny_resnet, input_size=32))
    folder = tmp_path / 'timm-folder'
    timm.models.save_for_hf(finetuned(), str(folder), safe_serialization=True)
    hub = {'org/compressed': compressed, 'org/timm': str(folder)}
    monkeypatch.setattr(practise_df.checkpoint, 'hf_hub_download',
                        lambda repo, name, revision=None: os.path.join(hub[repo], name))
    monkeypatch.setattr(practise_df.checkpoint, 'snapshot_download', lambda repo, **kw: hub[repo])
    assert load_model('hf-hub:org/compressed').practise_df_source['model'] == 'timm:resnet18'
    built = []
    monkeypatch.setattr(practise_df.checkpoint, 'create_model', lambda spec, weights=None, **kw: built.append(spec))
    load_model('hf-hub:org/timm', num_classes=5)
    assert built == ['hf-hub:org/timm']  # timm's own hub loader builds it


@pytest.mark.parametrize('setting, message', [
    ({'interpolation': 'cubic'}, "Unknown interpolation 'cubic'; choose from"),
    ({'crop_pct': 1.5}, 'crop_pct is a fraction above 0 and at most 1'),
    ({'model_kwargs': [1]}, 'model_kwargs must be a mapping'),
    ({'num_classes': 0}, 'num_classes=0: must be at least 1'),
    ({'num_classes': 3, 'model_kwargs': {'num_classes': 4}}, 'num_classes is 3 but the model arguments say 4'),
])
def test_a_settings_file_with_bad_model_settings_is_refused(tmp_path, setting, message):
    settings = {'model': 'timm:test_resnet', 'output_dir': str(tmp_path / 'run'), 'scoring': {'drop': 1}, **setting}
    with pytest.raises(ValueError, match=message):
        CompressConfig.from_dict(settings)
