import pytest
import torch

from practise_df import block_latency_savings, drop_and_recover, score_blocks, select_blocks
from practise_df.latency import count_macs, count_params, measure_latency
from practise_df.scoring import BlockScore, RecoverySettings

from conftest import SMALL

FAST = RecoverySettings(steps=5, batch_size=8, resolution_scale=1.0)


@pytest.fixture
def zero_branch_resnet(tiny_resnet):
    """layer2.1's residual branch outputs exactly zero: dropping it loses nothing."""
    import copy
    model = copy.deepcopy(tiny_resnet)
    with torch.no_grad():
        model.layer2[1].bn2.weight.zero_()
        model.layer2[1].bn2.bias.zero_()
    return model


def _latency(blocks, pct=10.0):
    return {b: {'saved_ms': 1.0, 'saved_pct': pct, 'latency_ms': 9.0, 'base_ms': 10.0} for b in blocks}


def test_zero_branch_block_is_recoverable_and_chosen_first(zero_branch_resnet):
    gen = torch.Generator().manual_seed(0)
    train, held = torch.randn(8, *SMALL, generator=gen), torch.randn(4, *SMALL, generator=gen)
    blocks = ['layer1.0', 'layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    scores = score_blocks(zero_branch_resnet, train, held, settings=FAST, latency=_latency(blocks), progress=False)
    by_block = {s.block: s for s in scores}
    assert set(by_block) == set(blocks)
    assert by_block['layer2.1'].mse_dropped < 1e-10
    assert by_block['layer2.1'].recoverability < 1e-8
    others = [s.recoverability for s in scores if s.block != 'layer2.1']
    assert min(others) > 1e3 * max(by_block['layer2.1'].recoverability, 1e-12)
    assert scores[0].block == 'layer2.1'
    assert select_blocks(scores, drop=1) == ['layer2.1']


def test_adaptors_reduce_the_error_of_a_real_block(tiny_resnet):
    gen = torch.Generator().manual_seed(1)
    train = torch.randn(8, *SMALL, generator=gen)
    settings = RecoverySettings(steps=30, batch_size=8, lr=1e-3, resolution_scale=1.0)
    [s] = score_blocks(tiny_resnet, train, train, blocks=['layer4.1'], settings=settings,
                       latency=_latency(['layer4.1']), progress=False)
    assert s.num_adaptors > 0
    assert s.recoverability < 0.5 * s.mse_dropped  # fitted on the same images: must improve


def test_score_is_recoverability_over_latency_saved(tiny_resnet):
    """PRACTISE's score is recoverability / latency saved (%), dropped lowest first; a block that saves nothing
    (here it costs 1%) comes after every block that saves time, never first as a negative score would put it."""
    train = torch.randn(4, *SMALL)
    lat = {'layer1.1': {'saved_ms': 2.0, 'saved_pct': 20.0, 'latency_ms': 8, 'base_ms': 10},
           'layer4.1': {'saved_ms': -0.1, 'saved_pct': -1.0, 'latency_ms': 10.1, 'base_ms': 10}}
    scores = score_blocks(tiny_resnet, train, train, blocks=list(lat), latency=lat, progress=False,
                          settings=RecoverySettings(steps=2, batch_size=4, resolution_scale=1.0))
    saves, costs = scores
    assert (saves.block, costs.block) == ('layer1.1', 'layer4.1')
    assert saves.score == pytest.approx(saves.recoverability / 20.0)
    assert costs.score > 0 and costs.score >= 100 * costs.recoverability  # divided by 0.01% or less


def test_scoring_rejects_bad_input(tiny_resnet):
    x = torch.randn(2, *SMALL)
    with pytest.raises(ValueError, match='Not droppable'):
        score_blocks(tiny_resnet, x, x, blocks=['layer2.0'], latency={}, progress=False)
    with pytest.raises(ValueError, match='Unknown estimator'):
        score_blocks(tiny_resnet, x, x, estimator='magic', progress=False)
    with pytest.raises(ValueError, match='at least one'):
        score_blocks(tiny_resnet, x[:0], x, progress=False)


def test_select_by_count_and_errors():
    scores = [BlockScore(b, r, r, 1, 10, r / 10) for b, r in [('a', 3.0), ('b', 1.0), ('c', 2.0)]]
    assert select_blocks(scores, drop=2) == ['b', 'c']
    with pytest.raises(ValueError, match='exactly one'):
        select_blocks(scores)
    with pytest.raises(ValueError, match='between 1 and 3'):
        select_blocks(scores, drop=4)
    with pytest.raises(ValueError, match='fraction between 0 and 1'):
        select_blocks(scores, latency_reduction=25)


def test_select_by_latency_target(tiny_resnet):
    scores = [BlockScore(b, 1.0, 1.0, 1, 10, i) for i, b in enumerate(['layer3.1', 'layer4.1', 'layer1.0'])]
    kw = dict(input_size=SMALL, batch_size=2, repeats=3, warmup=1)
    chosen = select_blocks(scores, latency_reduction=0.01, model=tiny_resnet, latency_kwargs=kw)
    assert chosen == ['layer3.1', 'layer4.1', 'layer1.0'][:len(chosen)]
    with pytest.raises(ValueError, match='cannot be reached'):
        select_blocks(scores, latency_reduction=0.95, model=tiny_resnet, latency_kwargs=kw)


def test_drop_and_recover_returns_a_plain_folded_model(tiny_resnet):
    train = torch.randn(8, *SMALL)
    pruned = drop_and_recover(tiny_resnet, ['layer1.1', 'layer2.1'], train, settings=FAST)
    assert type(pruned) is type(tiny_resnet)
    keys = set(tiny_resnet.state_dict()) - {k for k in tiny_resnet.state_dict()
                                            if k.startswith(('layer1.1.', 'layer2.1.'))}
    assert set(pruned.state_dict()) == keys
    assert pruned(train[:2]).shape == (2, 10)


def test_latency_params_and_macs(tiny_resnet):
    lat = measure_latency(tiny_resnet, SMALL, batch_size=2, repeats=3, warmup=1)
    assert lat.median_ms > 0 and lat.p10_ms <= lat.median_ms <= lat.p90_ms
    savings = block_latency_savings(tiny_resnet, ['layer1.1', 'layer4.1'], SMALL, repeats=3, warmup=1)
    assert set(savings) == {'layer1.1', 'layer4.1'}
    assert all(v['base_ms'] > 0 for v in savings.values())
    assert count_params(tiny_resnet) == sum(p.numel() for p in tiny_resnet.parameters())
    from practise_df import drop_blocks
    assert count_macs(drop_blocks(tiny_resnet, ['layer4.1']), SMALL) < count_macs(tiny_resnet, SMALL)
