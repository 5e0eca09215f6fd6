import pytest
import torch

from practise_df import create_model, drop_blocks
from practise_df.adaptors import fold_adaptors, insert_adaptors
from practise_df.adaptors import Adapted, find_adaptor_sites
from practise_df.models import PrePoolFeatures

from conftest import SMALL, randomize_norms

CASES = [
    ('timm:resnet18', 'layer2.1', SMALL),
    ('torchvision:resnet50', 'layer3.2', SMALL),
    ('timm:tf_efficientnet_lite0', 'blocks.3.1', SMALL),
    ('torchvision:mobilenet_v2', 'features.9', SMALL),
    ('timm:test_convnext', 'stages.2.blocks.1', SMALL),
    ('timm:test_vit', 'blocks.2', None),
]


def test_adaptor_sites_follow_the_official_resnet_rule():
    """Official PRACTISE: after the last conv of every earlier block of the stage and the shortcut
    conv; before conv1 of every later block and the next stage's conv1 and shortcut."""
    model = drop_blocks(create_model('torchvision:resnet50'), ['layer3.3'])
    sites = find_adaptor_sites(model, ['layer3.3'], SMALL)
    assert sites == {
        'layer3.0.downsample.0': (False, True), 'layer3.0.conv3': (False, True),
        'layer3.1.conv3': (False, True), 'layer3.2.conv3': (False, True),
        'layer3.4.conv1': (True, False), 'layer3.5.conv1': (True, False),
        'layer4.0.conv1': (True, False), 'layer4.0.downsample.0': (True, False),
    }


def test_adaptor_sites_mobilenet_v2():
    model = drop_blocks(create_model('torchvision:mobilenet_v2'), ['features.5'])
    assert find_adaptor_sites(model, ['features.5'], SMALL) == {
        'features.4.conv.2': (False, True), 'features.6.conv.0.0': (True, False), 'features.7.conv.0.0': (True, False)}


@pytest.mark.parametrize('spec,block,size', CASES, ids=[c[0] for c in CASES])
def test_fold_is_exact(spec, block, size):
    torch.manual_seed(0)
    model = randomize_norms(create_model(spec))
    size = size or model.pretrained_cfg['input_size']
    pruned = drop_blocks(model, [block])
    reference_keys = set(pruned.state_dict())
    params = insert_adaptors(pruned, [block], size)
    assert params, 'every case here has foldable neighbours'
    assert any(isinstance(m, Adapted) for m in pruned.modules())
    x = torch.randn(2, *size)
    with torch.no_grad():
        identity_out = PrePoolFeatures(pruned)(x)
        torch.testing.assert_close(identity_out, PrePoolFeatures(drop_blocks(model, [block]))(x),
                                   rtol=1e-4, atol=1e-5)  # identity-initialised: nothing changes yet
        for p in params:
            p.add_(torch.randn_like(p) * 0.3)
        adapted_out = PrePoolFeatures(pruned)(x)
        fold_adaptors(pruned)
        folded_out = PrePoolFeatures(pruned)(x)
    assert not any(isinstance(m, Adapted) for m in pruned.modules())
    assert type(pruned) is type(model)
    assert set(pruned.state_dict()) == reference_keys
    rel = (folded_out - adapted_out).norm() / adapted_out.norm()
    assert rel < 1e-4, rel
    # the perturbation moved the output far more than folding did, so the check above is not vacuous
    assert (adapted_out - identity_out).norm() > 100 * (folded_out - adapted_out).norm()


def test_depthwise_convs_get_no_adaptor():
    model = drop_blocks(create_model('timm:tf_efficientnet_lite0'), ['blocks.4.1'])
    for name in find_adaptor_sites(model, ['blocks.4.1'], SMALL):
        assert model.get_submodule(name).groups == 1
