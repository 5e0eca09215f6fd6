"""Weights of a model spec (practise_df.models): files, random weights in every command, and weights of
another architecture."""
import os
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

from conftest import MODEL, TINY, cli
from practise_df import create_model
from practise_df.models import efficientnet_lite0_weights, parse_spec


@pytest.fixture(scope='module')
def source():
    torch.manual_seed(0)
    return create_model('timm:test_resnet')


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize('suffix', ['.pth', '.pt', '.bin', '.safetensors'])
def test_local_weights_round_trip(tmp_path, source, suffix):
    path = str(tmp_path / f'w{suffix}')
    state = source.state_dict()
    if suffix == '.safetensors':
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    assert _same_weights(create_model('timm:test_resnet', weights=path), source)


@pytest.mark.parametrize('wrap', ['state_dict', 'model', 'module_prefix'])
def test_nested_and_ddp_checkpoints(tmp_path, source, wrap):
    state = source.state_dict()
    if wrap == 'module_prefix':
        ckpt = {'module.' + k: v for k, v in state.items()}
    else:
        ckpt = {wrap: state, 'epoch': 3}
    path = str(tmp_path / 'ckpt.pth')
    torch.save(ckpt, path)
    assert _same_weights(create_model('timm:test_resnet', weights=path), source)


def test_foreign_key_names_are_mapped_in_order(tmp_path, source):
    renamed = OrderedDict((f'foreign_{i}', v) for i, v in enumerate(source.state_dict().values()))
    path = str(tmp_path / 'foreign.pth')
    torch.save(renamed, path)
    assert _same_weights(create_model('timm:test_resnet', weights=path), source)


def test_foreign_keys_with_wrong_shapes_are_refused(tmp_path, source):
    values = list(source.state_dict().values())
    values[3] = torch.zeros(values[3].numel() + 1)
    path = str(tmp_path / 'bad.pth')
    torch.save(OrderedDict((f'k{i}', v) for i, v in enumerate(values)), path)
    with pytest.raises(ValueError, match=r'mapping them in order fails at tensor 3'):
        create_model('timm:test_resnet', weights=path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = str(tmp_path / 'r18.pth')
    torch.save(create_model('timm:resnet18').state_dict(), path)
    with pytest.raises(ValueError, match=r'do not fit this architecture: the file has \d+ tensors, the model \d+'):
        create_model('timm:test_resnet', weights=path)


def test_same_names_wrong_shape_is_refused(tmp_path, source):
    state = source.state_dict()
    state['fc.weight'] = torch.zeros(3, state['fc.weight'].shape[1])
    path = str(tmp_path / 'w.pth')
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(3, .*num_classes"):
        create_model('timm:test_resnet', weights=path)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        create_model('timm:test_resnet', weights=str(tmp_path / 'missing.pth'))
    garbage = tmp_path / 'garbage.pth'
    garbage.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='Could not read weights'):
        create_model('timm:test_resnet', weights=str(garbage))
    odd = tmp_path / 'weights.txt'
    odd.write_text('x')
    with pytest.raises(ValueError, match='unknown suffix'):
        create_model('timm:test_resnet', weights=str(odd))


def test_unknown_model_names_suggest_close_matches():
    with pytest.raises(ValueError, match="Unknown timm model 'resnet5'.*resnet50"):
        parse_spec('resnet5')
    with pytest.raises(ValueError, match="Unknown torchvision model 'mobilenet_v9'.*mobilenet_v2"):
        parse_spec('torchvision:mobilenet_v9')
    with pytest.raises(ValueError, match="Unknown model library 'keras'"):
        parse_spec('keras:resnet50')
    assert str(parse_spec('resnet50')) == 'timm:resnet50'


def test_packaged_lite0_weights_map_onto_timm():
    """EfficientNet-PyTorch key names, mapped in order onto timm's tf_efficientnet_lite0."""
    path = efficientnet_lite0_weights()
    raw = torch.load(path, map_location='cpu', weights_only=True)
    model = create_model('timm:tf_efficientnet_lite0', weights=path)
    assert torch.equal(model.conv_stem.weight, raw['_conv_stem.weight'])
    assert torch.equal(model.classifier.weight, raw['_fc.weight'])
    assert os.path.getsize(path) > 1_000_000


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


# Issue 15: every argument is checked before the long work starts.
@pytest.mark.parametrize('command', sorted(RANDOM_WEIGHTS))
def test_weights_random_works_in_every_command(capsys, tmp_path, images, command):
    argv = [a.format(images=images, tmp=tmp_path) for a in RANDOM_WEIGHTS[command]]
    code, _, err = cli(capsys, argv[0], *MODEL, '--weights', 'random', *argv[1:])
    assert code == 0, err


# Issue 15: every argument is checked before the long work starts.
def test_weights_of_another_architecture_name_the_mismatch(capsys, tmp_path):
    path = tmp_path / 'resnet34.safetensors'
    save_file(create_model('timm:resnet34').state_dict(), str(path))
    code, _, err = cli(capsys, 'blocks', *MODEL, '--weights', path)
    assert code == 2 and 'layer1.2' in err and 'include []' not in err and 'do not fit' in err


# Issue 28: what a run says about itself.
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
