"""practise_df.cli: the practise-df commands, their arguments and how a run ends (errors, Ctrl-C)."""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ENV, MODEL, ROOT, cli, cli_commands, make_image_folder
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
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 64, '--blocks', 'layer4.1',
                       '--repeats', 3, '--warmup', 1, '--json')
    assert code == 0
    r = json.loads(out)
    full, dropped = r['variants']
    assert dropped['params'] < full['params'] and dropped['macs'] < full['macs']
    assert full['median_ms'] > 0 and 'saved_pct' in r
    assert r['runs'] == 3 and r['saved_low'] is None and 'too few for a 95% interval' in r['warning']
    assert {'cpu_count', 'other_cores', 'loadavg_before', 'busy'} <= set(r['load'])


def test_latency_of_a_compressed_model_shows_its_teacher(capsys, tmp_path):
    from practise_df import create_model, drop_blocks, save_compressed
    student = drop_blocks(create_model('timm:resnet18'), ['layer4.1'])
    save_compressed(student, str(tmp_path / 'student'), data_config={'input_size': (3, 32, 32)})
    code, out, _ = run(capsys, 'latency', '--model', tmp_path / 'student', '--repeats', 6, '--warmup', 1)
    assert code == 0
    lines = out.splitlines()
    teacher_row = next(i for i, line in enumerate(lines) if line.startswith('teacher timm:resnet18'))
    assert lines[teacher_row + 1].startswith('model')
    assert re.search(r'latency saved \(model vs teacher timm:resnet18\): -?[\d.]+%, 95% interval -?[\d.]+ to', out)


def test_latency_per_block_is_what_compress_reads(capsys, tmp_path):
    path = tmp_path / 'lat.json'
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 32, '--per-block',
                       '--repeats', 2, '--warmup', 1, '--json', '--output', path)
    assert code == 0 and json.loads(out) == json.loads(path.read_text())
    from practise_df.latency import read_block_latency
    table = read_block_latency(str(path))
    assert sorted(table) == ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    assert all({'saved_ms', 'saved_pct', 'latency_ms'} <= set(v) for v in table.values())
    code, out, _ = run(capsys, 'latency', '--model', 'timm:resnet18', '--input-size', 32, '--per-block',
                       '--blocks', 'layer4.1', '--repeats', 2, '--warmup', 1)
    assert code == 0 and 'layer4.1' in out and 'layer1.1' not in out and 'saved %' in out and '95% interval' in out
    assert 'warning: latency is uncertain' in out


def test_bad_input_exits_2_with_a_message(capsys):
    code, _, err = run(capsys, 'latency', '--model', 'timm:resnet18', '--blocks', 'layer2.0', '--input-size', 64)
    assert code == 2 and 'Not droppable: layer2.0' in err and 'layer1.1' in err
    code, _, err = run(capsys, 'blocks', '--model', 'timm:resnet5')
    assert code == 2 and 'Did you mean' in err
    code, _, err = run(capsys, 'eval', '--model', 'timm:test_resnet', '--data', '/nonexistent/folder')
    assert code == 2 and "does not exist" in err


def test_score_select_save_then_eval(capsys, tmp_path, image_folder):
    out_dir = tmp_path / 'compressed'
    code, out, err = run(capsys, 'score', '--model', 'timm:resnet18', '--input-size', 64, '--data', image_folder,
                         '--train-images', 6, '--heldout-images', 6, '--adaptor-steps', 2, '--drop', 2,
                         '--latency-repeats', 6, '--output-dir', out_dir, '--json')
    assert code == 0, err
    r = json.loads(out)
    assert len(r['scores']) == 5 and len(r['selected']) == 2
    assert all(s['saved_low'] <= s['saved_pct'] <= s['saved_high'] for s in r['scores'])  # each block's interval
    assert sorted(os.listdir(out_dir)) == ['config.json', 'model.safetensors']
    assert json.load(open(out_dir / 'config.json'))['dropped_blocks'] == r['selected']
    # refuses to overwrite without --overwrite
    code, _, err = run(capsys, 'score', '--model', 'timm:resnet18', '--input-size', 64, '--data', image_folder,
                       '--train-images', 6, '--heldout-images', 6, '--adaptor-steps', 1, '--drop', 1,
                       '--output-dir', out_dir)
    assert code == 2 and 'already holds a compressed model' in err and '--overwrite' in err
    numbered = make_image_folder(str(tmp_path / 'numbered'), classes=('0', '1', '2'), per_class=4)  # class indices
    code, out, err = run(capsys, 'eval', '--model', out_dir, '--data', numbered, '--teacher', 'timm:resnet18',
                         '--batch-size', 4, '--repeats', 2, '--json')
    assert code == 0, err
    r = json.loads(out)
    assert r['images'] == 12 and r['labelled'] == 12
    assert 0 <= r['top1'] <= r['top5'] <= 100 and 0 <= r['agreement'] <= 100 and r['latency_ms'] > 0


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, '-m', 'practise_df.cli', '--version'], capture_output=True, text=True)
    assert proc.returncode == 0 and 'practise-df' in proc.stdout


def test_commands_turn_on_mkl_reproducible_mode_unless_the_user_chose():
    """Byte-identical CPU results need MKL's reproducible mode (README, Determinism); a command sets it before
    its work, and leaves a value the user set alone."""
    script = ('import os, sys; from practise_df.cli import main; code = main(sys.argv[1:]); '
              "print(os.environ.get('MKL_CBWR')); sys.exit(code)")
    env = {k: v for k, v in os.environ.items() if k != 'MKL_CBWR'}
    for user, expected in ((None, 'AUTO'), ('COMPATIBLE', 'COMPATIBLE')):
        proc = subprocess.run([sys.executable, '-c', script, 'blocks', '--model', 'timm:test_resnet', '--json'],
                              capture_output=True, text=True, env={**env, **({'MKL_CBWR': user} if user else {})})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == expected


def test_compress_flags_reach_the_config():
    import argparse

    from practise_df.cli.compress import add_compress_arguments, config_from_args
    parser = add_compress_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))
    base = ['--model', 'timm:resnet18', '--output-dir', 'x', '--drop', '1']
    config = config_from_args(parser.parse_args(base))
    assert config.scoring.keep_adaptors is False and config.scoring.drop == 1 and config.finetune.freeze_bn is None
    config = config_from_args(parser.parse_args(base + ['--keep-adaptors', '--finetune-batch-size', '8',
                                                        '--synth-steps', '7', '--input-size', '64']))
    assert config.scoring.keep_adaptors and config.finetune.batch_size == 8 and config.synthesis.steps == 7
    assert config.input_size == 64
    recipe = {'model': 'timm:resnet50', 'output_dir': 'r', 'scoring': {'drop': 5}, 'finetune': {'steps': 9}}
    config = config_from_args(parser.parse_args(['--latency-reduction', '0.2']), recipe)
    assert config.scoring.drop is None and config.scoring.latency_reduction == 0.2, 'a given selection replaces'
    assert config.finetune.steps == 9 and config.model == 'timm:resnet50'


def test_deprecated_spellings_still_work_and_say_so(capsys):
    import argparse

    from practise_df.cli.compress import add_compress_arguments, config_from_args
    parser = add_compress_arguments(argparse.ArgumentParser(prog='compress', argument_default=argparse.SUPPRESS))
    args = parser.parse_args(['--model', 'timm:resnet18', '--output-dir', 'x', '--drop', '1', '--resolution', '48',
                              '--iterations', '5', '--batch-size', '4', '--adaptors', '--teacher-weights', 'w.pth'])
    config = config_from_args(args)
    assert (config.input_size, config.synthesis.steps, config.finetune.batch_size) == (48, 5, 4)
    assert config.scoring.keep_adaptors and config.weights == 'w.pth'
    err = capsys.readouterr().err
    for old, new in (('--resolution', '--input-size'), ('--iterations', '--synth-steps'),
                     ('--batch-size', '--finetune-batch-size'), ('--adaptors', '--keep-adaptors'),
                     ('--teacher-weights', '--weights')):
        assert f'{old} is deprecated' in err and f'use {new}' in err


def _deprecated_aliases():
    """(command, old spelling, new spelling) of every deprecated alias the CLI declares, read from its parsers."""
    from practise_df.cli._args import old_spellings
    return [(command, old, new) for command, parser in sorted(cli_commands().items())
            for old, (new, _) in sorted(old_spellings(parser).items())]


ALIASES = _deprecated_aliases()


def _sample(action) -> list:
    """Arguments that ``action`` accepts: none for a switch, else the first of a few candidates its type takes."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [str(sorted(action.choices)[0])]
    for value in ('3', '0.5', 'layer1.1', 'cpu', '{}'):
        try:
            action.type(value) if action.type else None
            return [value]
        except (argparse.ArgumentTypeError, ValueError, TypeError):
            continue
    raise AssertionError(f'no sample value for {action.option_strings} (type {action.type}); add one above')


def test_the_cli_declares_deprecated_aliases():  # the parametrised test below must not pass on an empty list
    assert ('synth', '--out', '--output-dir') in ALIASES and ('compress', '--no-adaptors', '--no-keep-adaptors') \
        in ALIASES and len(ALIASES) >= 10


@pytest.mark.parametrize('command,old,new', ALIASES, ids=[f'{c} {o}' for c, o, _ in ALIASES])
def test_every_deprecated_alias_parses_as_its_new_spelling(capsys, command, old, new):
    """Each old spelling is accepted, says what to write instead and sets what the new one sets, also where the
    new flag is required (synth --out DIR was refused: 'the following arguments are required: --output-dir')."""
    from practise_df.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and command in a.choices).choices[command]
    action = sub._option_string_actions[new]
    required = [arg for a in sub._actions if a.required and a is not action for arg in [a.option_strings[0],
                                                                                          *_sample(a)]]
    with_old = parser.parse_args([command, *required, old, *_sample(action)])
    err = capsys.readouterr().err
    assert f'{old} is deprecated' in err and f'use {new}' in err
    with_new = parser.parse_args([command, *required, new, *_sample(action)])
    assert vars(with_old) == vars(with_new)
    given = getattr(with_old, action.dest, None)  # and it is what the alias set, not a default
    assert given is not None and (action.required or given != getattr(parser.parse_args([command, *required]),
                                                                       action.dest, None))


def test_every_shared_flag_has_one_name_type_and_help():
    """One vocabulary: a flag that several commands take means the same everywhere (same type, same help),
    and no command spells a shared idea another way."""
    subparsers = cli_commands()
    seen = {}
    for name, sub in subparsers.items():
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or not action.option_strings:
                continue
            for flag in action.option_strings:
                # defaults differ between commands; compress writes its own into the help text
                seen.setdefault(flag, []).append((name, action.type, re.sub(r' \(default: [^)]*\)$', '', action.help)))
    for flag, uses in seen.items():
        if len(uses) > 1:
            assert len({(t, h) for _, t, h in uses}) == 1, f'{flag} differs between commands: {uses}'
    banned = {'--out', '--resolution', '--iterations', '--teacher-weights-file'}  # old or drifting spellings
    assert not banned & {f for f, uses in seen.items()}, 'old spellings are hidden deprecated aliases only'
    for name, sub in subparsers.items():
        flags = {f for a in sub._actions for f in a.option_strings if a.help != argparse.SUPPRESS}
        assert not {'--out', '--resolution'} & flags, name
        if any(a.dest == 'output_dir' for a in sub._actions):
            assert '--output-dir' in flags, name
    compress_flags = {f for a in subparsers['compress']._actions for f in a.option_strings
                      if a.help != argparse.SUPPRESS}
    assert {'--synth-batch-size', '--finetune-batch-size', '--latency-batch-size', '--eval-batch-size',
            '--synth-steps', '--adaptor-steps', '--finetune-steps'} <= compress_flags
    assert '--batch-size' not in compress_flags


def test_compress_config_file_round_trip(tmp_path):
    """run.json is the settings file: --config reads it back, and flags given override it."""
    import argparse

    from practise_df.cli.compress import add_compress_arguments, config_from_args
    from practise_df.config import CompressConfig
    parser = add_compress_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))
    config = config_from_args(parser.parse_args(['--model', 'timm:resnet18', '--output-dir', 'a', '--blocks',
                                                 'layer1.1,layer2.1', '--finetune-steps', '3', '--seed', '4']))
    path = tmp_path / 'run.json'
    path.write_text(json.dumps(config.to_dict()))
    again = config_from_args(parser.parse_args(['--config', str(path), '--output-dir', 'b']))
    assert again.output_dir == 'b' and again.to_dict() == {**config.to_dict(), 'output_dir': 'b'}
    yaml_path = tmp_path / 'run.yaml'
    yaml_path.write_text('model: timm:resnet18\noutput_dir: y\nscoring: {drop: 2}\nfinetune: {loss: kd}\n')
    from_yaml = config_from_args(parser.parse_args(['--config', str(yaml_path)]))
    assert from_yaml.scoring.drop == 2 and from_yaml.finetune.loss == 'kd'
    assert isinstance(from_yaml, CompressConfig)
    (tmp_path / 'bad.json').write_text('{"model": "timm:resnet18", "output_dir": "z", "scoring": {"drop": 1}, '
                                       '"finetune": {"iters": 3}}')
    import pytest
    with pytest.raises(ValueError, match='unknown setting.*iters'):
        config_from_args(parser.parse_args(['--config', str(tmp_path / 'bad.json')]))


def test_settings_and_keywords_of_earlier_releases_still_work(tmp_path):
    """Steps are steps everywhere now: a run.json with finetune.iterations / scoring.images loads (under --config,
    with flags over it), and the old Python keywords and attributes work and warn."""
    import dataclasses

    from practise_df.cli.compress import add_compress_arguments, config_from_args
    from practise_df.config import CompressConfig, FinetuneConfig, ScoringConfig
    from practise_df.scoring import ESTIMATORS
    old = {'model': 'timm:resnet18', 'output_dir': 'o', 'scoring': {'drop': 1, 'images': 6},
           'finetune': {'iterations': 3}}
    path = tmp_path / 'run.json'
    path.write_text(json.dumps(old))
    config = CompressConfig.from_file(str(path))
    assert (config.finetune.steps, config.scoring.num_images) == (3, 6)
    parser = add_compress_arguments(argparse.ArgumentParser(argument_default=argparse.SUPPRESS))
    assert config_from_args(parser.parse_args(['--config', str(path), '--finetune-steps', '4'])).finetune.steps == 4
    with pytest.raises(ValueError, match="'iterations' is the old name of 'steps'"):
        CompressConfig.from_dict({**old, 'finetune': {'iterations': 3, 'steps': 4}})
    with pytest.warns(DeprecationWarning, match='use steps='):
        assert FinetuneConfig(iterations=5).steps == 5
    with pytest.warns(DeprecationWarning, match=r'use FinetuneConfig\.steps'):
        assert FinetuneConfig(steps=7).iterations == 7
    with pytest.warns(DeprecationWarning, match='use steps='):
        assert dataclasses.replace(ESTIMATORS['fast'], iterations=2).steps == 2
    with pytest.warns(DeprecationWarning, match='use num_images='):
        assert ScoringConfig(drop=1, images=6).num_images == 6


def test_score_says_when_the_folder_holds_fewer_images_than_asked(capsys, caplog, image_folder):
    """issue 28: --heldout-images above what the folder holds was shortened without a word. Since issue 30 score
    loads its images as compress does, and refuses, before any work, a folder that holds fewer than asked."""
    code, _, err = run(capsys, 'score', '--model', 'timm:resnet18', '--input-size', 64, '--data', image_folder,
                       '--train-images', 2, '--heldout-images', 500, '--adaptor-steps', 1, '--latency-repeats', 1)
    assert code == 2
    assert 'holds 12 readable image(s), fewer than --num-images 502' in err and 'Pass --num-images 12' in err


def test_score_is_compress_stopped_after_the_drop(capsys, tmp_path, image_folder):
    """issue 30: `score --drop K` and `compress --drop K --finetune-steps 0` run the same stages with the same
    defaults, so they save the same student (score went through its own pipeline: 100/100 images, adaptors
    always folded)."""
    import torch

    from practise_df import create_model, find_blocks, load_compressed
    blocks = find_blocks(create_model('timm:test_convnext'), (3, 64, 64))
    table = tmp_path / 'latency.json'  # one fixed latency table: the choice rests on recoverability, not the clock
    table.write_text(json.dumps({'blocks': {b: {'saved_ms': 1.0, 'saved_pct': 5.0 + i} for i, b in enumerate(blocks)}}))
    common = ['--model', 'timm:test_convnext', '--weights', 'random', '--input-size', 64, '--images', image_folder,
              '--num-images', 12, '--heldout-images', 4, '--score-images', 8, '--adaptor-steps', 3, '--drop', 2,
              '--block-latency', table, '--latency-repeats', 2, '--latency-batch-size', 2, '--seed', 3]
    code, out, err = run(capsys, 'score', *common, '--output-dir', tmp_path / 'scored', '--json')
    assert code == 0, err
    code, _, err = run(capsys, 'compress', *common, '--finetune-steps', 0, '--output-dir', tmp_path / 'run')
    assert code == 0, err
    scored, compressed = tmp_path / 'scored', tmp_path / 'run' / 'model'
    selected = json.loads(out)['selected']
    assert len(selected) == 2
    assert json.load(open(scored / 'config.json'))['dropped_blocks'] == selected == \
        json.load(open(compressed / 'config.json'))['dropped_blocks']
    one, two = load_compressed(str(scored)).state_dict(), load_compressed(str(compressed)).state_dict()
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one), [k for k in one if not torch.equal(one[k], two[k])]


# Issue 15: input the docs say is handled never crashes.
def test_an_unknown_or_absent_device_is_an_argument_error(capsys):
    code, _, err = cli(capsys, 'latency', *MODEL, '--device', 'foo')
    assert code == 2 and "argument --device: 'foo' is not a device" in err
    if not torch.cuda.is_available():
        code, _, err = cli(capsys, 'eval', *MODEL, '--data', '.', '--device', 'cuda')
        assert code == 2 and 'no CUDA GPU is visible' in err


def _default_sigint():
    # A shell starts background jobs (pytest ... &) with SIGINT ignored, the child inherits that and Python then
    # never raises KeyboardInterrupt: give the child the default a terminal user has.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


# Issue 15: input the docs say is handled never crashes.
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


# Issue 15: every argument is checked before the long work starts.
def test_batch_size_zero_is_refused(capsys, images):
    for argv in (['latency', *MODEL, '--batch-size', 0],
                 ['score', *MODEL, '--data', images, '--latency-batch-size', 0]):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and 'must be at least 1, got 0' in err
