import pytest
import torch
from conftest import SMALL

import practise_df as pdf
from practise_df import baselines, scoring
from practise_df.blocks import dropped_blocks
from practise_df.latency import Comparison, Latency, Saving, count_params

CANDIDATES = ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']


def _fake_latency(cost):
    """A stand-in for measure_latencies: deterministic 'latency' from ``cost(model)``."""
    def measure(models, input_size=SMALL, batch_size=1, device='cpu', warmup=0, repeats=1):
        return [Latency(float(cost(m)), 0.0, 0.0, batch_size, input_size, device, repeats) for m in models]
    return measure


def _fake_compare(cost):
    """A stand-in for compare_latency: exact savings (no interval) from ``cost(model)``."""
    def compare(models, input_size=SMALL, batch_size=1, device='cpu', **kwargs):
        lats = _fake_latency(cost)(models, input_size, batch_size, device)
        savings = [Saving(100 * (1 - lat.median_ms / lats[0].median_ms), None, None, 1) for lat in lats[1:]]
        return Comparison(lats, savings, 1, 0.0, 'repeats', 2.0, 60.0)
    return compare


def test_first_blocks():
    assert baselines.first_blocks(CANDIDATES, 2) == ['layer1.1', 'layer2.1']
    assert baselines.first_blocks(CANDIDATES, 0) == []
    with pytest.raises(ValueError, match='between 0 and 4'):
        baselines.first_blocks(CANDIDATES, 5)


def test_random_blocks_seeded_and_consistent_prefixes():
    draw = baselines.random_blocks(CANDIDATES, 4, seed=3)
    assert sorted(draw) == sorted(CANDIDATES)
    assert baselines.random_blocks(CANDIDATES, 4, seed=3) == draw
    assert baselines.random_blocks(CANDIDATES, 2, seed=3) == draw[:2]
    assert len({tuple(baselines.random_blocks(CANDIDATES, 4, seed=s)) for s in range(6)}) > 1
    with pytest.raises(ValueError):
        baselines.random_blocks(CANDIDATES, -1)


def test_output_difference_is_feature_mse_without_adaptors(tiny_resnet):
    images = torch.randn(4, *SMALL, generator=torch.Generator().manual_seed(0))
    latency = {b: {'saved_ms': 1.0, 'saved_pct': 10.0} for b in CANDIDATES}  # skip timing
    scores = baselines.output_difference_scores(tiny_resnet, images, blocks=CANDIDATES, latency=latency)
    assert sorted(s.block for s in scores) == CANDIDATES
    target = scoring.compute_features(tiny_resnet, images)
    for s in scores:
        assert s.mse_dropped > 0
        assert s.recoverability == pytest.approx(s.mse_dropped, rel=1e-5)  # identity adaptors, never fitted
        student = pdf.drop_blocks(tiny_resnet, [s.block])
        assert s.mse_dropped == pytest.approx(scoring.feature_mse(student, images, target), rel=1e-5)
    order = baselines.output_difference(scores)
    mse = {s.block: s.mse_dropped for s in scores}
    assert [mse[b] for b in order] == sorted(mse.values())


def test_output_difference_orders_by_mse_not_score():
    scores = [scoring.BlockScore('a', 1.0, 3.0, 0, 1, score=0.1), scoring.BlockScore('b', 1.0, 1.0, 0, 1, score=0.9),
              scoring.BlockScore('c', 1.0, 2.0, 0, 1, score=0.5)]
    assert baselines.output_difference(scores) == ['b', 'c', 'a']


def test_grow_to_latency_takes_shortest_prefix(tiny_resnet, monkeypatch):
    # every dropped block saves 1 ms of 10: 25% needs three blocks, whichever order is given
    monkeypatch.setattr(scoring, 'compare_latency', _fake_compare(lambda m: 10 - len(dropped_blocks(m))))
    order = ['layer3.1', 'layer1.1', 'layer4.1', 'layer2.1']
    assert baselines.grow_to_latency(tiny_resnet, order, 0.25) == order[:3]
    assert baselines.grow_to_latency(tiny_resnet, baselines.first_blocks(CANDIDATES, 4), 0.05) == ['layer1.1']
    with pytest.raises(ValueError, match='cannot be reached'):
        baselines.grow_to_latency(tiny_resnet, order[:2], 0.25)


def test_filter_prune_keeps_features_and_classifier(tiny_resnet):
    pruned = baselines.filter_prune(tiny_resnet, 0.5, SMALL)
    assert count_params(pruned) < 0.5 * count_params(tiny_resnet)
    x = torch.randn(2, *SMALL)
    with torch.no_grad():
        assert pruned.forward_features(x).shape == tiny_resnet.forward_features(x).shape
        assert pruned(x).shape == (2, 10)
    assert tiny_resnet.layer1[0].conv1.out_channels == 64  # the teacher is untouched
    assert baselines.filter_prune(tiny_resnet, 0.0, SMALL) is not tiny_resnet


def test_filter_prune_to_latency_reaches_target(tiny_resnet, monkeypatch):
    monkeypatch.setattr(baselines, 'measure_latencies', _fake_latency(count_params))
    pruned, ratio, saved = baselines.filter_prune_to_latency(tiny_resnet, 0.3, SMALL, steps=5)
    assert saved >= 0.3
    assert saved == pytest.approx(1 - count_params(pruned) / count_params(tiny_resnet))
    assert 0 < ratio < 0.9
    # a smaller ratio, half-way to the next bisection point, misses the target
    smaller = baselines.filter_prune(tiny_resnet, ratio * 0.8, SMALL)
    assert 1 - count_params(smaller) / count_params(tiny_resnet) < saved
    with pytest.raises(ValueError):
        baselines.filter_prune_to_latency(tiny_resnet, 1.5, SMALL)
