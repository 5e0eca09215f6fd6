import os
from collections import OrderedDict

import pytest
import torch
from safetensors.torch import save_file

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
