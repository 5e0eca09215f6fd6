import json
import os
import subprocess
import sys


from practise_df.cli import main


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_blocks_json_and_table(capsys):
    code, out, _ = run(capsys, 'blocks', '--model', 'torchvision:resnet18', '--input-size', 64, '--json')
    assert code == 0
    names = [b['name'] for b in json.loads(out)['blocks']]
    assert names == ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    code, out, _ = run(capsys, 'blocks', '--model', 'torchvision:resnet18', '--input-size', 64)
    assert '5 droppable blocks' in out and 'layer4.1' in out and 'BasicBlock' in out


def test_blocks_list_pattern(capsys):
    code, out, _ = run(capsys, 'blocks', '--list', 'resnet1*')
    assert code == 0 and 'timm:resnet18' in out and 'torchvision:resnet18' in out


def test_latency_with_drop(capsys):
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 64, '--drop', 'layer4.1',
                       '--repeats', 3, '--warmup', 1, '--json')
    assert code == 0
    r = json.loads(out)
    full, dropped = r['variants']
    assert dropped['params'] < full['params'] and dropped['macs'] < full['macs']
    assert full['median_ms'] > 0 and 'saved_pct' in r


def test_latency_per_block_is_what_compress_reads(capsys, tmp_path):
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 32, '--per-block',
                       '--repeats', 2, '--warmup', 1, '--json')
    assert code == 0
    path = tmp_path / 'lat.json'
    path.write_text(out)
    from practise_df.compress import read_block_latency
    table = read_block_latency(str(path))
    assert sorted(table) == ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    assert all({'saved_ms', 'saved_pct', 'latency_ms'} <= set(v) for v in table.values())
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 32, '--per-block',
                       '--drop', 'layer4.1', '--repeats', 2, '--warmup', 1)
    assert code == 0 and 'layer4.1' in out and 'layer1.1' not in out and 'saved %' in out


def test_bad_input_exits_2_with_a_message(capsys):
    code, _, err = run(capsys, 'latency', '--model', 'timm:resnet18', '--drop', 'layer2.0', '--input-size', 64)
    assert code == 2 and 'Not droppable: layer2.0' in err and 'layer1.1' in err
    code, _, err = run(capsys, 'blocks', '--model', 'timm:resnet5')
    assert code == 2 and 'Did you mean' in err
    code, _, err = run(capsys, 'eval', '--model', 'timm:test_resnet', '--data', '/nonexistent/folder')
    assert code == 2 and "does not exist" in err


def test_score_select_save_then_eval(capsys, tmp_path, image_folder):
    out_dir = tmp_path / 'compressed'
    code, out, err = run(capsys, 'score', '--model', 'timm:resnet18', '--input-size', 64, '--data', image_folder,
                         '--train-images', 6, '--heldout-images', 6, '--iterations', 2, '--drop', 2,
                         '--output', out_dir, '--json')
    assert code == 0, err
    r = json.loads(out)
    assert len(r['scores']) == 5 and len(r['selected']) == 2
    assert sorted(os.listdir(out_dir)) == ['config.json', 'model.safetensors']
    assert json.load(open(out_dir / 'config.json'))['dropped_blocks'] == r['selected']
    # refuses to overwrite without --overwrite
    code, _, err = run(capsys, 'score', '--model', 'timm:resnet18', '--input-size', 64, '--data', image_folder,
                       '--train-images', 6, '--heldout-images', 6, '--iterations', 1, '--drop', 1,
                       '--output', out_dir)
    assert code == 2 and 'already exists' in err
    code, out, err = run(capsys, 'eval', '--model', out_dir, '--data', image_folder, '--teacher', 'timm:resnet18',
                         '--batch-size', 4, '--repeats', 2, '--json')
    assert code == 0, err
    r = json.loads(out)
    assert r['images'] == 12 and r['labelled'] == 12
    assert 0 <= r['top1'] <= r['top5'] <= 100 and 0 <= r['agreement'] <= 100 and r['latency_ms'] > 0


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, '-m', 'practise_df.cli', '--version'], capture_output=True, text=True)
    assert proc.returncode == 0 and 'practise-df' in proc.stdout


def test_compress_adaptors_flag_reaches_the_config():
    import argparse

    from practise_df.cli import add_compress_arguments, compress_config_from_args
    parser = add_compress_arguments(argparse.ArgumentParser())
    base = ['--model', 'timm:resnet18', '--output-dir', 'x', '--drop', '1']
    assert compress_config_from_args(parser.parse_args(base)).adaptors is True
    assert compress_config_from_args(parser.parse_args(base + ['--no-adaptors'])).adaptors is False
    quick = add_compress_arguments(argparse.ArgumentParser(), adaptors=False)  # a recipe's default
    assert compress_config_from_args(quick.parse_args(base)).adaptors is False
    assert compress_config_from_args(quick.parse_args(base + ['--adaptors'])).adaptors is True
