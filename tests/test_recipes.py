"""The recipes end to end at a tiny scale, as users launch them, and without a network (one clear line)."""
import json
import os
import runpy
import subprocess
import sys
import time

import pytest

from conftest import ENV, ROOT, accelerate_launch, launch_log

# Latency at batch 2 with 2 timed runs: the default (batch 32, 10 runs, on all 12 candidate blocks) took
# three quarters of a smoke run, and timing is not what this test checks. 16 photo crops for the recovery
# choice, not 256: resnet50 over 256 crops for the teacher and each of 5 candidates was 16 s of a 36 s run.
SMOKE = ['--weights', 'random', '--num-images', '16', '--input-size', '64', '--synth-steps', '5',
         '--finetune-steps', '5', '--latency-batch-size', '2', '--latency-repeats', '2', '--adaptor-steps', '10',
         '--recovery-crops', '16']


@pytest.mark.parametrize('processes', [1, 2])
def test_datafree_resnet50_smoke(tmp_path, processes):
    out = tmp_path / 'run'
    proc = accelerate_launch('recipes/datafree_resnet50.py', SMOKE + ['--output-dir', out], processes, 1200)
    assert proc.returncode == 0, launch_log(proc)
    report = json.load(open(out / 'report.json'))
    assert len(report['dropped_blocks']) == 5 and report['model'] == 'timm:resnet50'
    assert report['image_source'] == 'synthesized'
    assert len(os.listdir(out / 'synth')) >= 2
    assert sum(1 for line in open(out / 'synth' / 'metadata.jsonl')) == 16
    assert report['params']['student'] < report['params']['teacher']
    assert 'latency saved' in proc.stdout


TINY = ['--model', 'timm:resnet18', '--weights', 'random', '--num-images', '12', '--input-size', '32',
        '--finetune-steps', '2', '--finetune-batch-size', '4', '--drop', '1', '--score-images', '8',
        '--adaptor-steps', '10', '--latency-batch-size', '2', '--latency-repeats', '2', '--recovery-crops', '16']


@pytest.mark.parametrize('recipe,extra', [('recipes/ood.py', []), ('recipes/fewshot.py', ['--loss', 'ce'])])
def test_image_recipes_on_a_local_folder(tmp_path, image_folder, recipe, extra):
    out = tmp_path / 'run'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, recipe), *TINY, *extra, '--images', image_folder,
                           '--output-dir', str(out), '--json'], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert report['image_source'] == image_folder and len(report['dropped_blocks']) == 1
    assert os.path.isfile(out / 'model' / 'model.safetensors')


@pytest.mark.parametrize('recipe', ['recipes/ood.py', 'recipes/fewshot.py'])
def test_recipes_refuse_missing_images(tmp_path, monkeypatch, capsys, recipe):
    # Run as a script, in this process: a new interpreter would spend its time importing torch.
    monkeypatch.setattr(sys, 'argv', [recipe, '--output-dir', str(tmp_path / 'x')])
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(os.path.join(ROOT, recipe), run_name='__main__')
    assert stop.value.code == 2 and 'needs --images' in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


# Issue 15: every argument is checked before the long work starts.
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
