"""Deployment: ONNX / torch.export of teachers and compressed students checked against PyTorch, ONNX Runtime
latency, the model card, and compressed models from the Hugging Face Hub."""
import contextlib
import io
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from huggingface_hub import ModelCard

pytest.importorskip('onnxruntime')
pytest.importorskip('onnxscript')

import practise_df.export  # noqa: E402
from conftest import MODEL, ROOT, boom, cli, make_image_folder, randomize_norms  # noqa: E402
from practise_df import create_model, drop_blocks, export_model, load_compressed, load_exported, save_compressed  # noqa: E402
from practise_df.cli import main  # noqa: E402
from practise_df.cli.compress import render_report  # noqa: E402
from practise_df.export import read_metadata  # noqa: E402
from practise_df.latency import block_latency_savings, measure_latencies, read_block_latency  # noqa: E402
from practise_df.model_card import model_card, write_model_card  # noqa: E402
from practise_df.runtime import require_deploy  # noqa: E402

SIZE = 32


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope='module')
def student_dir(tmp_path_factory):
    """A compressed timm student (two blocks dropped) saved as a folder, as compress writes it."""
    torch.manual_seed(0)
    teacher = randomize_norms(create_model('timm:resnet18', num_classes=10))
    path = str(tmp_path_factory.mktemp('students') / 'resnet18-pruned')
    return save_compressed(drop_blocks(teacher, ['layer1.1', 'layer3.1']), path,
                           data_config={'input_size': (3, SIZE, SIZE), 'interpolation': 'bilinear',
                                        'mean': (0.5, 0.5, 0.5), 'std': (0.25, 0.25, 0.25), 'crop_pct': 0.9,
                                        'crop_mode': 'center'})


@pytest.fixture(scope='module')
def exported(student_dir, tmp_path_factory):
    """The timm student exported by the CLI with a dynamic batch, checked on an image folder too."""
    root = tmp_path_factory.mktemp('export')
    images = make_image_folder(str(root / 'images'), classes=('a', 'b'), per_class=3, size=40)
    out, stdout = str(root / 'student.onnx'), io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(['export', '--model', student_dir, '--output', out, '--dynamic-batch', '--data', images, '--json'])
    assert code == 0
    return out, json.loads(stdout.getvalue())


def test_cli_export_of_a_compressed_student_checks_random_inputs_and_images(exported):
    exported, result = exported
    assert result['format'] == 'onnx' and result['dynamic_batch'] and result['opset'] >= 18
    assert set(result['checks']) == {'random', 'image'} and result['checks']['image']['images'] == 6
    for check in result['checks'].values():
        assert check['max_abs_diff'] <= 1e-3 and check['top1_mismatches'] == 0
    assert not [f for f in os.listdir(os.path.dirname(exported)) if f.startswith('.')]  # no temporary left


def test_onnx_runtime_matches_pytorch_at_any_batch(exported, student_dir):
    exported = exported[0]
    student, session = load_compressed(student_dir), load_exported(exported)
    for batch in (1, 4, 7):
        x = torch.randn(batch, 3, SIZE, SIZE)
        with torch.inference_mode():
            ref, out = student(x), session(x)
        assert out.shape == (batch, 10)
        assert (ref - out).abs().max() <= 1e-3 and torch.equal(ref.argmax(1), out.argmax(1))


def test_onnx_metadata_carries_preprocessing_and_classes(exported):
    exported = exported[0]
    meta = read_metadata(exported)
    assert meta['input_size'] == [3, SIZE, SIZE] and meta['num_classes'] == 10
    assert meta['mean'] == [0.5] * 3 and meta['std'] == [0.25] * 3
    assert meta['interpolation'] == 'bilinear' and meta['crop_pct'] == 0.9 and meta['crop_mode'] == 'center'
    assert meta['dropped_blocks'] == ['layer1.1', 'layer3.1'] and meta['source_model'] == 'timm:resnet18'
    # what a deployment reads without practise-df: ONNX Runtime's own view of the metadata
    raw = load_exported(exported).metadata
    assert raw['interpolation'] == 'bilinear' and json.loads(raw['mean']) == [0.5] * 3


def test_torchvision_student_with_a_static_batch(tmp_path):
    torch.manual_seed(0)
    student = drop_blocks(randomize_norms(create_model('torchvision:resnet18', num_classes=10)), ['layer2.1'])
    out = str(tmp_path / 'tv.onnx')
    result = export_model(student, out, input_size=SIZE, batch_size=2)
    assert result['checks']['random']['batch_sizes'] == [2] and result['metadata']['num_classes'] == 10
    session = load_exported(out)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        assert (session(x) - student(x)).abs().max() <= 1e-3
    with pytest.raises(Exception, match='invalid dimensions'):  # exported for batch 2 only
        session(torch.randn(3, 3, SIZE, SIZE))


def test_torch_export_round_trip(student_dir, tmp_path):
    student = load_compressed(student_dir)
    out = str(tmp_path / 'student.pt2')
    result = export_model(student, out, 'torch-export', dynamic_batch=True)
    assert result['checks']['random']['max_abs_diff'] <= 1e-6
    program = load_exported(out)
    x = torch.randn(5, 3, SIZE, SIZE)
    torch.testing.assert_close(program(x), student(x))
    assert read_metadata(out)['mean'] == [0.5] * 3 and read_metadata(out)['num_classes'] == 10


def test_bad_input_gets_a_clear_message(student_dir, tmp_path, capsys):
    student = load_compressed(student_dir)
    with pytest.raises(ValueError, match="Unknown export format 'tflite'; choose from onnx, torch-export"):
        export_model(student, str(tmp_path / 'x'), 'tflite')
    with pytest.raises(ValueError, match='opset 11.*writes opsets 18 to'):
        export_model(student, str(tmp_path / 'x.onnx'), opset=11)
    with pytest.raises(ValueError, match='--opset applies to ONNX only'):
        export_model(student, str(tmp_path / 'x.pt2'), 'torch-export', opset=18)
    with pytest.raises(SystemExit) as exit_:  # argparse's own check of --format
        run(capsys, 'export', '--model', student_dir, '--output', tmp_path / 'x', '--format', 'tflite')
    assert exit_.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    not_a_model = tmp_path / 'folder'
    not_a_model.mkdir()
    code, _, err = run(capsys, 'export', '--model', not_a_model, '--output', tmp_path / 'x.onnx')
    assert code == 2 and 'not a compressed model' in err
    code, _, err = run(capsys, 'export', '--model', student_dir, '--output', tmp_path / 'x.onnx', '--opset', '9')
    assert code == 2 and 'Cannot export ONNX opset 9' in err and 'between 18 and' in err
    (tmp_path / 'taken.onnx').write_text('')
    code, _, err = run(capsys, 'export', '--model', student_dir, '--output', tmp_path / 'taken.onnx')
    assert code == 2 and 'already exists' in err and '--overwrite' in err
    assert os.listdir(not_a_model) == []


class RandomHead(nn.Module):
    """Draws random numbers, so ONNX Runtime cannot reproduce PyTorch's output."""

    def forward(self, x):
        return x.mean((2, 3)) + torch.rand(x.shape[0], 3)


def test_an_export_that_differs_from_pytorch_is_an_error_and_not_written(tmp_path):
    out = tmp_path / 'random.onnx'
    with pytest.raises(ValueError, match='does not match PyTorch.*Nothing was written'):
        export_model(RandomHead(), str(out), data_config={'input_size': (3, 8, 8)})
    assert os.listdir(tmp_path) == []


def test_missing_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as when not installed
    with pytest.raises(ImportError, match=r"practise-df\[deploy\]"):
        require_deploy('onnxruntime')


def test_onnxruntime_latency_has_the_torch_shape(capsys, tmp_path, exported):
    model = create_model('timm:test_resnet', num_classes=10)
    code, out, _ = run(capsys, 'latency', '--model', 'timm:test_resnet', '--input-size', SIZE, '--per-block',
                       '--runtime', 'onnxruntime', '--threads', 1, '--repeats', 2, '--warmup', 1, '--json')
    assert code == 0
    r = json.loads(out)
    assert (r['runtime'], r['threads'], r['provider']) == ('onnxruntime', 1, 'CPUExecutionProvider')
    path = tmp_path / 'lat.json'
    path.write_text(out)  # what compress --block-latency reads
    eager = block_latency_savings(model, list(r['blocks']), (3, SIZE, SIZE), repeats=1, warmup=0)
    assert read_block_latency(str(path)).keys() == eager.keys()
    assert all(v.keys() == eager[b].keys() and v['latency_ms'] > 0 for b, v in r['blocks'].items())
    # an exported file is timed as it is, without exporting again
    lat, = measure_latencies([load_exported(exported[0], threads=1)], (3, SIZE, SIZE), batch_size=3, repeats=2,
                             runtime='onnxruntime', threads=1)
    assert lat.runtime == 'onnxruntime' and lat.threads == 1 and lat.batch_size == 3 and lat.median_ms > 0


REPORT = {
    'model': 'timm:resnet18', 'weights': 'r18.pth', 'image_source': 'synthesized', 'dropped_blocks': ['layer1.1'],
    'adaptors': False, 'compressed_model': 'runs/r18/model',
    'scores': [{'block': 'layer1.1', 'recoverability': 0.12, 'mse_dropped': 0.3, 'saved_ms': 1.0, 'saved_pct': 8.0,
                'score': 0.015}],
    'latency': {'device': 'cpu', 'batch_size': 32, 'input_size': [3, 64, 64], 'teacher_ms': 40.0, 'student_ms': 36.0,
                'saved_pct': 10.0, 'runtime': 'onnxruntime', 'threads': 2, 'provider': 'CPUExecutionProvider'},
    'params': {'teacher': 11689512, 'student': 11541800}, 'macs': {'teacher': 149000000, 'student': 140000000},
    'finetune': {'loss': 'mir', 'steps': 0, 'final_loss': None}, 'heldout_agreement': 93.75,
}


def test_model_card_is_hub_metadata_plus_what_was_done(student_dir):
    text = model_card(REPORT, command='practise-df compress --model timm:resnet18 --drop 1')
    card = ModelCard(text)
    assert card.data.license == 'unknown' and card.data.base_model == 'unknown'
    assert card.data.library_name == 'practise-df' and card.data.pipeline_tag == 'image-classification'
    assert {'practise-df', 'pruned', 'data-free'} <= set(card.data.tags) and 'timm' not in card.data.tags
    for expected in ('`layer1.1`', 'onnxruntime, cpu, CPUExecutionProvider, 2 threads', '11,689,512',
                     '10.0%', '93.75%', 'practise-df compress --model timm:resnet18 --drop 1',
                     "load_compressed('hf-hub:ORG/NAME')"):
        assert expected in text, expected
    card = ModelCard(model_card(REPORT, license='apache-2.0', base_model='timm/resnet18.a1_in1k'))
    assert card.data.license == 'apache-2.0' and card.data.base_model == 'timm/resnet18.a1_in1k'
    path = write_model_card(student_dir, {**REPORT, 'eval': {
        'data': 'val/', 'teacher': {'top1': 70.0, 'top5': 90.0, 'images': 8},
        'student': {'top1': 62.5, 'top5': 87.5, 'agreement': 75.0, 'images': 8}}})
    text = open(path).read()
    assert path == os.path.join(student_dir, 'README.md')
    assert '62.50%' in text and '75.00%' in text and "mean `[0.5, 0.5, 0.5]`" in text
    assert load_compressed(student_dir) is not None  # the card sits beside the model without disturbing it



def test_an_older_reports_image_source_names_are_read():
    """Reports before the one-word rename called the recovery's and the guard's image source 'images'."""
    from practise_df.report import Report
    old = {**REPORT, 'images': 'synthesized', 'recovery': {'images': '8 crops of the sample photos', 'num_images': 8},
           'guard': {'images': '8 crops of the sample photos', 'crops': 8}}
    old.pop('image_source')
    report = Report.from_dict(old)
    assert report.image_source == 'synthesized'
    assert report.recovery == {'image_source': '8 crops of the sample photos', 'num_images': 8}
    assert report.guard == {'image_source': '8 crops of the sample photos', 'crops': 8}


HUB_SCRIPT = """
import os, shutil, sys
from practise_df import load_compressed
cache = os.path.join(os.environ['HF_HOME'], 'hub')
try:
    load_compressed('hf-hub:acme/resnet18-pruned')
except FileNotFoundError as e:
    print('ERROR', e)
repo = os.path.join(cache, 'models--acme--resnet18-pruned')
os.makedirs(os.path.join(repo, 'refs'))
open(os.path.join(repo, 'refs', 'main'), 'w').write('0' * 40)
shutil.copytree(sys.argv[1], os.path.join(repo, 'snapshots', '0' * 40))
print('LOADED', type(load_compressed('hf-hub:acme/resnet18-pruned')).__name__)
"""


def test_eval_and_latency_take_an_exported_file(capsys, exported, tmp_path):
    path, _ = exported
    numbered = make_image_folder(str(tmp_path / 'numbered'), classes=('0', '1', '2'), per_class=4)  # class indices
    code, out, _ = run(capsys, 'eval', '--model', path, '--data', numbered, '--batch-size', 3, '--repeats', 2,
                       '--json')
    assert code == 0, out
    r = json.loads(out)
    assert r['images'] == 12 and 0 <= r['top1'] <= 100 and r['latency_ms'] > 0
    code, out, _ = run(capsys, 'latency', '--model', path, '--batch-size', 2, '--repeats', 2, '--json')
    r = json.loads(out)
    assert code == 0 and r['runtime'] == 'onnxruntime' and r['variants'][0]['params'] is None
    assert r['input_size'] == [3, SIZE, SIZE]  # from the file's metadata
    code, _, err = run(capsys, 'latency', '--model', path, '--runtime', 'torch')
    assert code != 0 and 'runs in ONNX Runtime' in err


def test_hub_models_load_from_the_cache_and_offline_says_what_to_do(student_dir, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'), PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, '-c', HUB_SCRIPT, student_dir], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    error = next(line for line in proc.stdout.splitlines() if line.startswith('ERROR'))
    assert "Cannot fetch 'hf-hub:acme/resnet18-pruned'" in error and 'offline' in error
    assert 'hf download acme/resnet18-pruned --local-dir DIR' in error and 'pass the folder' in error
    assert 'LOADED ResNet' in proc.stdout


def test_compress_measures_in_onnxruntime_and_writes_a_model_card(tmp_path, image_folder):
    from practise_df import CompressConfig, compress

    numbered = make_image_folder(str(tmp_path / 'numbered'), classes=('0', '1', '2'), per_class=4)  # class indices
    config = CompressConfig(model='timm:test_resnet', output_dir=str(tmp_path / 'run'), input_size=SIZE,
                            images={'source': image_folder, 'num_images': 8, 'heldout': 2},
                            scoring={'drop': 1, 'num_images': 4, 'adaptor_steps': 10},
                            latency={'batch_size': 2, 'repeats': 2, 'runtime': 'onnxruntime', 'threads': 1},
                            card={'license': 'mit'}, finetune={'steps': 0},
                            eval={'data': numbered, 'export': 'int8'})
    report = compress(config, progress=False)
    assert (report['latency']['runtime'], report['latency']['threads']) == ('onnxruntime', 1)
    # what ships: the int8 file in the run, checked, evaluated, and the one the final latency check timed
    shipped = str(tmp_path / 'run' / 'model-int8.onnx')
    assert report['export']['file'] == shipped and os.path.isfile(shipped)
    assert set(report['export']['checks']) == {'random', 'image'}
    assert 0 <= report['eval']['exported']['top1'] <= 100 and report['eval']['exported']['images'] == 12
    assert report['latency']['student'] == shipped and report['export']['latency'] == \
        {k: v for k, v in report['latency'].items() if k != 'student'}  # measured once
    assert 'deployable int8 file' in render_report(report)
    assert 'Deployable file: `model-int8.onnx` (int8' in open(tmp_path / 'run' / 'model' / 'README.md').read()
    block_latency = json.load(open(tmp_path / 'run' / 'block_latency.json'))
    assert (block_latency['runtime'], block_latency['provider']) == ('onnxruntime', 'CPUExecutionProvider')
    card = ModelCard.load(str(tmp_path / 'run' / 'model' / 'README.md'))
    assert card.data.license == 'mit' and card.data.base_model == 'unknown'
    assert f"`{report['dropped_blocks'][0]}`" in card.text and 'onnxruntime, cpu' in card.text


def test_int8_quantization_is_onnx_runtime_static_with_metadata_and_reported_differences(student_dir, tmp_path,
                                                                                         capsys):
    images = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b'), per_class=4, size=40)
    out = tmp_path / 'int8.onnx'
    code, stdout, _ = run(capsys, 'export', '--model', student_dir, '--output', out, '--dynamic-batch',
                          '--quantize', 'int8', '--calibration', images, '--calibration-images', 8, '--data', images,
                          '--json')
    assert code == 0
    result = json.loads(stdout)
    assert result['quantize'] == 'int8' and set(result['checks']) == {'random', 'image'}
    meta = read_metadata(str(out))
    assert meta['quantization'].startswith('int8: ONNX Runtime static QDQ') and meta['num_classes'] == 10
    assert meta['mean'] == [0.5, 0.5, 0.5], 'the float export\'s preprocessing metadata survives quantization'
    require_deploy('onnx')
    import onnx
    ops = {node.op_type for node in onnx.load(str(out)).graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear'} <= ops
    quantized, student = load_exported(str(out)), load_compressed(student_dir).eval()
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.inference_mode():
        a, b = student(x), quantized(x)
    assert b.shape == a.shape and torch.isfinite(b).all()
    assert 0 < result['checks']['random']['max_abs_diff'] < float('inf'), 'int8 changes logits, and says by how much'
    assert torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1] > 0.9, 'int8 logits follow the float ones'
    # without --calibration the sample photos calibrate it (no data of the user's)
    default = export_model(load_compressed(student_dir), str(tmp_path / 'photos.onnx'), quantize='int8',
                           num_calibration=4)
    assert 'natural sample photos' in default['metadata']['quantization']
    with pytest.raises(ValueError, match="--quantize int8 is done by ONNX Runtime: use --format onnx"):
        export_model(load_compressed(student_dir), str(tmp_path / 'x.pt2'), 'torch-export', quantize='int8')
    with pytest.raises(ValueError, match="Unknown quantization 'int4'"):
        export_model(load_compressed(student_dir), str(tmp_path / 'x.onnx'), quantize='int4')


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
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
