import pytest
import torch

from practise_df import create_model, drop_blocks, find_blocks
from practise_df.blocks import dropped_blocks
from practise_df.models import PrePoolFeatures

from conftest import SMALL, randomize_norms

RESNET50_OFFICIAL = ['layer1.1', 'layer1.2', 'layer2.1', 'layer2.2', 'layer2.3', 'layer3.1', 'layer3.2', 'layer3.3',
                     'layer3.4', 'layer3.5', 'layer4.1', 'layer4.2']
# resnet18's layer1.0 keeps 64 channels and has no downsample: an identity-skip block like the others
RESNET18_BLOCKS = ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
MOBILENET_V2_OFFICIAL = [f'features.{i}' for i in (3, 5, 6, 8, 9, 10, 12, 13, 15, 16)]

# (spec, constructor kwargs, expected candidates: a list, or a count)
FAMILIES = [
    ('timm:resnet18', {}, RESNET18_BLOCKS),
    ('timm:test_resnet', {}, ['layer1.0']),
    ('timm:resnext26ts', {}, 4),
    ('timm:seresnet18', {}, RESNET18_BLOCKS),
    ('timm:regnetx_002', {}, 9),
    ('timm:tf_efficientnet_lite0', {}, ['blocks.1.1', 'blocks.2.1', 'blocks.3.1', 'blocks.3.2', 'blocks.4.1',
                                        'blocks.4.2', 'blocks.5.1', 'blocks.5.2', 'blocks.5.3']),
    ('timm:efficientnet_b0', {}, 9),
    ('timm:mobilenetv2_050', {}, 10),
    ('timm:mobilenetv3_small_050', {}, 7),  # width 0.5 rounds blocks.3.0 to equal in/out channels
    ('timm:test_convnext', {}, 9),
    ('timm:test_vit', {}, [f'blocks.{i}' for i in range(6)]),
    ('timm:deit_tiny_patch16_224', {'depth': 3}, ['blocks.0', 'blocks.1', 'blocks.2']),
    ('torchvision:resnet18', {}, RESNET18_BLOCKS),
    ('torchvision:mobilenet_v2', {'width_mult': 0.5}, MOBILENET_V2_OFFICIAL),
    ('torchvision:mobilenet_v3_small', {}, ['features.3', 'features.5', 'features.6', 'features.8', 'features.10',
                                            'features.11']),
    ('torchvision:efficientnet_b0', {}, 9),
    ('torchvision:convnext_tiny', {}, 18),
]


def _size(model, spec):
    # ViTs need their native resolution; convnets are tested at 64 px to stay fast
    return None if 'vit' in spec or 'deit' in spec else SMALL


@pytest.mark.parametrize('spec,kwargs,expected', FAMILIES, ids=[f[0] for f in FAMILIES])
def test_discovery_drop_and_forward(spec, kwargs, expected):
    torch.manual_seed(0)
    model = randomize_norms(create_model(spec, **kwargs))
    size = _size(model, spec)
    blocks = find_blocks(model, size)
    if isinstance(expected, int):
        assert len(blocks) == expected, blocks
    else:
        assert blocks == expected
    x = torch.randn(2, *(size or model.pretrained_cfg['input_size']))
    with torch.no_grad():
        ref = model(x)
        last = blocks[-1]
        pruned = drop_blocks(model, [last], candidates=blocks)
        out = pruned(x)
    assert type(pruned) is type(model)
    assert out.shape == ref.shape
    assert not torch.allclose(out, ref)
    assert isinstance(pruned.get_submodule(last), torch.nn.Identity)
    assert dropped_blocks(pruned) == [last]
    assert not isinstance(model.get_submodule(last), torch.nn.Identity), 'drop_blocks must not modify its input'


@pytest.mark.parametrize('spec', ['timm:resnet50', 'torchvision:resnet50'])
def test_resnet50_gives_the_official_candidates(spec):
    assert find_blocks(create_model(spec), SMALL) == RESNET50_OFFICIAL


def test_mobilenet_v2_gives_the_official_candidates():
    assert find_blocks(create_model('torchvision:mobilenet_v2'), SMALL) == MOBILENET_V2_OFFICIAL


def test_non_candidate_is_a_clear_error(tiny_resnet):
    with pytest.raises(ValueError,
                       match=r"Not droppable: layer2\.0.*Candidate blocks of this model are: layer1\.0, layer1\.1"):
        drop_blocks(tiny_resnet, ['layer2.0'])
    with pytest.raises(ValueError, match='Not droppable: nonexistent'):
        drop_blocks(tiny_resnet, ['nonexistent'])


def test_dropping_several_blocks_and_prepool_features(tiny_resnet):
    pruned = drop_blocks(tiny_resnet, ['layer1.1', 'layer3.1'])
    feats = PrePoolFeatures(pruned)(torch.randn(1, *SMALL))
    assert feats.shape == (1, 64, 2, 2)  # the last stage's channels, at 1/32 of 64 px
    assert dropped_blocks(pruned) == ['layer1.1', 'layer3.1']


@pytest.mark.parametrize('spec', ['torchvision:resnet18', 'torchvision:mobilenet_v3_small'])
def test_prepool_features_torchvision_match_the_head(spec):
    """Pooling + head applied to the tapped features reproduce the logits."""
    torch.manual_seed(0)
    model = create_model(spec)
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        feats = PrePoolFeatures(model)(x)
        pooled = feats.mean((2, 3))
        head = model.fc if hasattr(model, 'fc') else model.classifier
        torch.testing.assert_close(head(pooled), model(x), rtol=1e-4, atol=1e-5)
