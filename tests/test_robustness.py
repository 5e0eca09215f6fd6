"""practise_df.robustness: accuracy under corruptions, CE / mCE against the teacher, the summary and heatmap,
the command's checks before evaluating, CLI and compress.

The evaluation itself runs on ``TORCH_DEVICE`` (default cpu; ``TORCH_DEVICE=cuda pytest ...`` checks a GPU)."""
import json
import os
import sys

import pytest
import torch
from torch.utils.data import DataLoader

import practise_df.robustness
from conftest import DEVICE, MODEL, cli, make_image_folder
from practise_df import drop_blocks, resolve_data_config
from practise_df.cli import main
from practise_df.finetune import FinetuneConfig
from practise_df.pipeline import CompressConfig, check_settings, compress
from practise_df.robustness import (_summary, evaluate_folder_robustness, evaluate_robustness, robustness_table,
                                    save_heatmap)
from synth.data import ImageFolderDataset, eval_transform

SUBSET = dict(corruptions='gaussian_noise,fog,jpeg_compression', severities='1,5', device=DEVICE)


@pytest.fixture
def loader(tmp_path, tiny_resnet):
    folder = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b', 'c'), per_class=3, size=48)
    config = resolve_data_config(tiny_resnet, input_size=48)
    data = ImageFolderDataset(folder, eval_transform(config, normalize=False))
    return DataLoader(data, batch_size=4), config


def test_teacher_against_itself_is_the_baseline(loader, tiny_resnet):
    batches, config = loader
    r = evaluate_robustness(tiny_resnet, batches, config['mean'], config['std'], teacher=tiny_resnet,
                            progress=False, **SUBSET)
    assert r['images'] == 9 and r['severities'] == [1, 5]
    assert list(r['corruptions']) == ['gaussian_noise', 'fog', 'jpeg_compression']
    for by_severity in r['corruptions'].values():
        for v in by_severity.values():
            assert v['agreement'] == 100.0 and v['top1'] == v['teacher_top1']
    s = r['summary']
    assert s['mean_corruption_agreement'] == 100.0
    assert s['mean_corruption_top1'] == s['teacher_mean_corruption_top1']
    assert all(ce == pytest.approx(100.0) for ce in s['ce'].values()) and s['mce'] == pytest.approx(100.0)
    text = robustness_table(r)
    assert 'gaussian_noise' in text and 'mCE vs teacher: 100.0%' in text


def test_same_seed_same_result_and_student_differs(loader, tiny_resnet):
    batches, config = loader
    student = drop_blocks(tiny_resnet, ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1'])
    runs = [evaluate_robustness(student, batches, config['mean'], config['std'], teacher=tiny_resnet, seed=seed,
                                progress=False, **SUBSET) for seed in (0, 0)]
    assert runs[0] == runs[1]
    agreement = [v['agreement'] for c in runs[0]['corruptions'].values() for v in c.values()]
    assert min(agreement) < 100.0, 'a student with four blocks dropped disagrees somewhere'


def test_several_models_in_one_pass_match_separate_runs(loader, tiny_resnet):
    """A {name: model} mapping sees the same corrupted images as one call per model would."""
    batches, config = loader
    students = {'one': drop_blocks(tiny_resnet, ['layer2.1']),
                'two': drop_blocks(tiny_resnet, ['layer2.1', 'layer3.1'])}
    together = evaluate_robustness(students, batches, config['mean'], config['std'], teacher=tiny_resnet,
                                   progress=False, **SUBSET)
    assert set(together) == {'one', 'two'}
    for name, student in students.items():
        alone = evaluate_robustness(student, batches, config['mean'], config['std'], teacher=tiny_resnet,
                                    progress=False, **SUBSET)
        assert together[name] == alone, name
    with pytest.raises(ValueError, match='No model to evaluate'):
        evaluate_robustness({}, batches, config['mean'], config['std'], progress=False, **SUBSET)


def test_ce_and_relative_ce_follow_the_definitions():
    result = {'labelled': 10, 'clean': {'top1': 90.0, 'teacher_top1': 95.0, 'agreement': 90.0},
              'corruptions': {'fog': {'1': {'top1': 70.0, 'teacher_top1': 80.0, 'agreement': 80.0},
                                      '5': {'top1': 30.0, 'teacher_top1': 55.0, 'agreement': 50.0}}}}
    s = _summary(result, with_teacher=True)
    assert s['ce']['fog'] == pytest.approx(100 * (30 + 70) / (20 + 45))
    assert s['relative_ce']['fog'] == pytest.approx(100 * ((30 - 10) + (70 - 10)) / ((20 - 5) + (45 - 5)))
    assert s['mean_corruption_top1'] == 50.0 and s['teacher_mean_corruption_top1'] == 67.5
    assert s['mean_corruption_agreement'] == 65.0


def test_unlabelled_images_give_agreement_only(tmp_path, tiny_resnet):
    folder = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=4, size=48)
    config = resolve_data_config(tiny_resnet, input_size=48)
    batches = DataLoader(ImageFolderDataset(folder, eval_transform(config, normalize=False)), batch_size=4)
    r = evaluate_robustness(tiny_resnet, batches, config['mean'], config['std'], teacher=tiny_resnet,
                            corruptions='contrast', severities='3', progress=False)
    assert 'top1' not in r['clean'] and r['summary'] == {'mean_corruption_agreement': 100.0}
    assert 'agreement' in robustness_table(r)


def test_folder_takes_lists_of_corruptions_and_severities(tmp_path, tiny_resnet):
    """The API's list arguments work as the CLI's comma strings (a list used to fail as one unknown name)."""
    folder = make_image_folder(str(tmp_path / 'images'), classes=('a', 'b'), per_class=2, size=48)
    config = resolve_data_config(tiny_resnet, input_size=48)
    r = evaluate_folder_robustness(tiny_resnet, folder, config, teacher=tiny_resnet, corruptions=['contrast', 'fog'],
                                   severities=[1, 3], device=DEVICE, progress=False)
    assert list(r['corruptions']) == ['contrast', 'fog'] and r['severities'] == [1, 3]
    assert r['data'] == folder and r['skipped_files'] == 0 and r['images'] == 4


def test_an_empty_loader_is_named_as_such(tiny_resnet):
    for teacher in (None, tiny_resnet):  # not mistaken for unlabelled images without a teacher
        with pytest.raises(ValueError, match='yielded no images'):
            evaluate_robustness(tiny_resnet, [], (0.5,) * 3, (0.5,) * 3, teacher=teacher, corruptions='contrast',
                                progress=False)


def test_normalised_images_are_refused(loader, tiny_resnet):
    _, config = loader
    with pytest.raises(ValueError, match=r'normalize=False'):
        evaluate_robustness(tiny_resnet, [(torch.randn(2, 3, 48, 48) * 3, torch.zeros(2))], config['mean'],
                            config['std'], corruptions='contrast', severities='1', progress=False)


def test_heatmap_png(loader, tiny_resnet, tmp_path):
    batches, config = loader
    r = evaluate_robustness(drop_blocks(tiny_resnet, ['layer3.1']), batches, config['mean'], config['std'],
                            teacher=tiny_resnet, progress=False, corruptions='brightness,pixelate', severities='1-2')
    path = save_heatmap(r, str(tmp_path / 'heat.png'), title='test')
    from PIL import Image
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 100


def test_cli_json_table_heatmap_and_bad_names(tmp_path, capsys):
    folder = make_image_folder(str(tmp_path / 'images'), classes=('0', '1'), per_class=2, size=40)
    args = ['robustness', '--model', 'timm:resnet18', '--teacher', 'timm:resnet18', '--data', folder,
            '--input-size', '40', '--corruptions', 'gaussian_noise,fog', '--severities', '1,5']
    heat, out = str(tmp_path / 'heat.png'), str(tmp_path / 'r.json')
    assert main(args + ['--json', '--heatmap', heat, '--output', out]) == 0
    r = json.loads(capsys.readouterr().out)
    assert set(r['corruptions']) == {'gaussian_noise', 'fog'} and r['images'] == 4
    assert os.path.isfile(heat) and json.load(open(out))['summary'] == r['summary']
    assert main(args) == 0
    assert 'mean corruption top-1' in capsys.readouterr().out
    assert main(args[:-4] + ['--corruptions', 'gausian_noise']) == 2
    err = capsys.readouterr().err
    assert "Did you mean 'gaussian_noise'" in err and 'jpeg_compression' in err
    assert main(args[:-2] + ['--severities', '0,6']) == 2
    assert 'valid severities: 1, 2, 3, 4, 5' in capsys.readouterr().err


def test_compress_adds_robustness_to_the_report(tmp_path):
    images = make_image_folder(str(tmp_path / 'images'), classes=('0', '1'), per_class=4, size=40)
    config = CompressConfig(model='timm:resnet18', output_dir=str(tmp_path / 'run'), input_size=32,
                            images={'source': images, 'num_images': 8, 'heldout': 2},
                            scoring={'drop': 1, 'num_images': 4, 'adaptor_steps': 10},
                            latency={'batch_size': 2, 'repeats': 2},
                            eval={'data': images}, robustness={'enabled': True, 'corruptions': 'shot_noise',
                                                               'severities': '2'},
                            finetune=FinetuneConfig(steps=1, batch_size=4))
    report = compress(config, progress=False)
    r = report['robustness']
    assert list(r['corruptions']) == ['shot_noise'] and 'mce' in r['summary']
    assert os.path.isfile(r['heatmap'])
    assert json.load(open(tmp_path / 'run' / 'report.json'))['robustness']['summary'] == r['summary']
    with pytest.raises(ValueError, match='robustness needs eval data'):
        CompressConfig(model='timm:resnet18', output_dir='x', scoring={'drop': 1}, robustness={'enabled': True})
    with pytest.raises(ValueError, match='Unknown corruption'):  # a registry name: checked before any work
        check_settings(CompressConfig(model='timm:resnet18', output_dir='x', scoring={'drop': 1},
                                      eval={'data': images}, robustness={'enabled': True, 'corruptions': 'rain'}))


# Issue 15: input the docs say is handled never crashes.
def test_robustness_without_labels_or_teacher_says_so_before_evaluating(capsys, no_long_work, tmp_path):
    flat = make_image_folder(str(tmp_path / 'flat'), classes=(), flat=4, size=40)
    code, _, err = cli(capsys, 'robustness', *MODEL, '--data', flat)
    assert code == 2 and 'no labels' in err and '--teacher' in err and 'KeyError' not in err


# Issue 15: input the docs say is handled never crashes.
def test_robustness_output_naming_a_folder_is_refused_before_evaluating(capsys, no_long_work, images, tmp_path):
    code, _, err = cli(capsys, 'robustness', *MODEL, '--data', images, '--output', tmp_path)
    assert code == 2 and 'is a directory; name a file' in err


# Issue 15: input the docs say is handled never crashes.
def test_a_heatmap_that_cannot_be_drawn_keeps_the_numbers(capsys, monkeypatch, images, tmp_path):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # as if matplotlib were not installed
    out = tmp_path / 'r.json'
    code, text, _ = cli(capsys, 'robustness', *MODEL, '--data', images, '--corruptions', 'fog', '--severities', 1,
                        '--output', out, '--heatmap', tmp_path / 'h.png')
    assert code == 0 and 'heatmap: not drawn' in text and 'matplotlib' in text
    saved = json.loads(out.read_text())
    assert saved['heatmap'].startswith('not drawn') and 'fog' in saved['corruptions']
    assert not (tmp_path / 'h.png').exists()


# Issue 28: a run folder is known by its content; outputs never in place of inputs.
def test_the_robustness_summary_never_prints_a_percent_of_nothing():
    cell = {'top1': 100.0, 'teacher_top1': 100.0, 'agreement': 100.0}
    result = {'images': 2, 'severities': [1], 'clean': cell, 'corruptions': {'fog': {'1': cell}},
              'summary': {'ce': {'fog': None}, 'mce': None, 'relative_mce': None, 'mean_corruption_top1': 100.0,
                          'teacher_mean_corruption_top1': 100.0}}
    text = practise_df.robustness.robustness_table(result)
    assert 'n/a%' not in text and 'relative mCE: n/a' in text and 'the teacher makes no error' in text
