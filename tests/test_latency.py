"""practise_df.latency: the measurement itself, on a fake clock: intervals, when repeats stop, the warning, and
the selection rule that uses the interval's low end; and the latency command's block names. No test here asserts a
real timing."""
import math
import random

import pytest
import torch
import torch.nn as nn

from conftest import MODEL, cli
from practise_df import scoring
from practise_df.latency import (MIN_ROUNDS, SESSION_ROUNDS, Comparison, Latency, Saving, compare_latency,
                                 median_interval, paired_saving)
from practise_df.scoring import BlockScore, comparable_savings, select_blocks

SIZE = (3, 4, 4)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeModel(nn.Module):
    """Takes ``ms`` milliseconds of fake time per call, times a seeded log-normal noise factor. A copy shares
    the clock and the noise, and is ``placement`` (log-normal sd) faster or slower than the model copied: where
    a copy's weights lie in memory changes its speed."""

    def __init__(self, clock, ms, noise=0.0, seed=0, placement=0.0):
        super().__init__()
        self.clock, self.ms, self.noise, self.rng, self.placement = clock, ms, noise, random.Random(seed), placement
        self.copies = [self]  # every copy made, shared by the copies

    def forward(self, x):
        self.clock.now += self.ms * math.exp(self.rng.gauss(0, self.noise)) / 1000
        return x

    def __deepcopy__(self, memo):
        twin = FakeModel(self.clock, self.ms * math.exp(self.rng.gauss(0, self.placement)), self.noise)
        twin.rng, twin.placement, twin.copies = self.rng, self.placement, self.copies
        self.copies.append(twin)
        return twin


def idle_cpu(clock):
    """cpu_clock of an idle machine: only this process used CPU time."""
    return lambda: (clock.now, clock.now)


def busy_cpu(clock, cores=2.0):
    """cpu_clock of a machine where other processes keep ``cores`` busy."""
    return lambda: (clock.now * (1 + cores), clock.now)


def compare(clock, models, cpu=None, **kw):
    return compare_latency(models, SIZE, warmup=1, clock=clock, cpu_clock=cpu or idle_cpu(clock), **kw)


def test_median_interval_is_the_sign_test_interval():
    assert median_interval(list(range(10))) == (4.5, 1, 8)  # P(Bin(10, .5) <= 1) = 1.1% per tail
    assert median_interval([1.0] * (MIN_ROUNDS - 1))[1:] == (None, None)  # too few values for 95%
    rng = random.Random(0)  # it covers the true median of a skewed distribution about 95% of the time or more
    median = math.log(2)
    covered = 0
    for _ in range(1000):
        _, low, high = median_interval([rng.expovariate(1.0) for _ in range(25)])
        covered += low <= median <= high
    assert covered >= 940


def test_paired_saving_is_the_median_ratio():
    s = paired_saving([10.0] * 9, [8.0] * 9)
    assert s.pct == pytest.approx(20.0) and s.low == pytest.approx(20.0) and s.high == pytest.approx(20.0)
    assert s.pairs == 9 and not s.within_noise
    few = paired_saving([10.0] * (MIN_ROUNDS - 1), [8.0] * (MIN_ROUNDS - 1))
    assert few.pct == pytest.approx(20.0) and few.low is None and 'no interval' in few.describe()


def _drifting_ratios(rng, n, phi, sd=0.05, noise=0.01, saving=20.0):
    """(baseline ms, variant ms) whose log ratio wanders around log(1 - saving) as an AR(1) process with
    correlation ``phi`` from one round to the next (a shared machine's slow drift), plus independent noise."""
    level, base, variant = 0.0, [], []
    for _ in range(n):
        level = phi * level + rng.gauss(0, sd * math.sqrt(1 - phi ** 2))
        base.append(10.0 * math.exp(rng.gauss(0, noise)))
        variant.append(base[-1] * (1 - saving / 100) * math.exp(level + rng.gauss(0, noise)))
    return base, variant


def test_every_session_times_fresh_copies_and_the_interval_covers_their_spread():
    """Separate measurements of models whose speed depends on the copy (sd 10% per copy): each measurement
    times a fresh copy every SESSION_ROUNDS rounds, and its interval covers the saving averaged over copies
    (20%) in most measurements; the originals alone would give each measurement one draw and a narrow
    interval around it."""
    covered = 0
    for seed in range(40):
        clock = FakeClock()
        base, variant = (FakeModel(clock, 10, 0.01, seed=seed, placement=0.1),
                         FakeModel(clock, 8, 0.01, seed=1000 + seed, placement=0.1))
        result = compare(clock, [base, variant], repeats=60, seed=seed)
        assert len(base.copies) == len(variant.copies) == 60 // SESSION_ROUNDS  # the originals, then 19 copies
        s = result.savings[0]
        covered += s.low <= 20.0 <= s.high
    assert covered >= 34, covered  # 95% nominal: at least 85% of 40


@pytest.mark.parametrize('phi, old_at_most', [(0.0, 1.0), (0.9, 0.6)])
def test_the_interval_covers_a_drifting_saving(phi, old_at_most):
    """Over 300 simulated measurements of 200 rounds, the batch interval covers the true saving about 95% of the
    time whether the ratios are independent (phi 0) or drift (phi 0.9); the interval that takes rounds as
    independent (the sign-test interval of the pairs' median) covers a drifting saving far less often."""
    rng = random.Random(0)
    new = old = 0
    for _ in range(300):
        base, variant = _drifting_ratios(rng, 200, phi)
        s = paired_saving(base, variant)
        new += s.low <= 20.0 <= s.high
        _, low, high = median_interval([math.log(v / b) for b, v in zip(base, variant)])
        old += low <= math.log(0.8) <= high
    assert new >= 0.9 * 300
    assert old <= old_at_most * 300


def test_quiet_timings_give_a_narrow_interval_and_no_warning():
    clock = FakeClock()
    result = compare(clock, [FakeModel(clock, 10, 0.01, seed=1), FakeModel(clock, 8, 0.01, seed=2)])
    saving, = result.savings
    assert result.stopped == 'interval' and saving.width <= 2.0
    assert saving.low <= 20.0 <= saving.high
    assert result.latencies[0].median_ms == pytest.approx(10, rel=0.02)
    assert result.warning is None and not result.busy
    assert result.load['other_cores'] == 0 and result.to_dict()['runs'] == result.rounds


def test_noisy_timings_warn_that_the_saving_is_within_noise():
    clock = FakeClock()
    result = compare(clock, [FakeModel(clock, 10, 0.5, seed=1), FakeModel(clock, 9.5, 0.5, seed=2)], max_seconds=0.5)
    saving, = result.savings
    assert saving.width > abs(saving.pct)
    assert 'wider than itself' in result.warning and result.to_dict()['warning'] == result.warning


def test_a_busy_machine_warns_even_when_the_interval_is_narrow():
    clock = FakeClock()
    result = compare(clock, [FakeModel(clock, 10, 0.01, seed=1), FakeModel(clock, 8, 0.01, seed=2)],
                     cpu=busy_cpu(clock), threads=1)
    assert result.busy and result.load['other_cores'] == pytest.approx(2.0)
    assert 'other processes used 2.0' in result.warning and 'wider' not in result.warning


def test_auto_repeats_stop_at_the_time_cap():
    clock = FakeClock()
    models = [FakeModel(clock, 10, 0.5, seed=1), FakeModel(clock, 10, 0.5, seed=2)]
    result = compare(clock, models, max_seconds=2.0, ci_width=0.01)
    assert result.stopped == 'time cap'
    assert 2.0 <= result.seconds < 2.0 + 0.2  # the round that crossed the cap finishes, no more
    assert result.rounds > MIN_ROUNDS and result.savings[0].within_noise


def test_fixed_repeats_and_the_minimum_rounds_before_the_cap():
    clock = FakeClock()
    result = compare(clock, [FakeModel(clock, 10), FakeModel(clock, 5)], repeats=7)
    assert result.rounds == 7 and result.stopped == 'repeats' and result.latencies[1].repeats == 7
    slow = compare(clock, [FakeModel(clock, 1000, 0.5), FakeModel(clock, 1000, 0.5, seed=3)], max_seconds=0.001)
    assert slow.rounds == MIN_ROUNDS and slow.stopped == 'time cap'  # an interval exists even past the cap
    few = compare(clock, [FakeModel(clock, 10), FakeModel(clock, 5)], repeats=2)
    assert few.savings[0].low is None and 'too few' in few.warning
    with pytest.raises(ValueError, match="'auto'"):
        compare(clock, [FakeModel(clock, 10)], repeats=0)


def _fake_compare(savings):
    """compare_latency that returns the next of ``savings`` (pct, low, high) for each student timed."""
    pending = list(savings)

    def compare_(models, **kwargs):
        lat = Latency(1.0, 1.0, 1.0, 1, SIZE, 'cpu', 10)
        return Comparison([lat, lat], [Saving(*pending.pop(0), pairs=10)], 10, 1.0, 'interval', 2.0, 60.0)
    return compare_


def test_latency_target_is_met_by_the_interval_low_end(monkeypatch, tiny_resnet):
    scores = [BlockScore(b, 1.0, 1.0, 1, 10, i) for i, b in enumerate(['layer3.1', 'layer4.1', 'layer1.1'])]
    # one block: 20% saved (the point estimate alone would stop here) but only 10% with 95% confidence
    monkeypatch.setattr(scoring, 'compare_latency', _fake_compare([(20, 10, 30), (30, 22, 38)]))
    steps = []
    assert select_blocks(scores, latency_reduction=0.15, model=tiny_resnet, steps=steps) == ['layer3.1', 'layer4.1']
    assert steps == [{'blocks': ['layer3.1'], 'saved_pct': 20, 'saved_low': 10, 'saved_high': 30, 'runs': 10},
                     {'blocks': ['layer3.1', 'layer4.1'], 'saved_pct': 30, 'saved_low': 22, 'saved_high': 38,
                      'runs': 10}], 'each measurement, so the report can show why the selection stopped there'
    monkeypatch.setattr(scoring, 'compare_latency', _fake_compare([(20, 10, 30), (25, 12, 38), (28, 14, 40)]))
    with pytest.raises(ValueError, match=r'cannot be reached with 95% confidence.*28.0% \(95% interval 14.0%'):
        select_blocks(scores, latency_reduction=0.15, model=tiny_resnet)


def test_blocks_whose_savings_overlap_share_one_saving():
    table = {'a': {'saved_pct': 20.0, 'saved_low': 18.0, 'saved_high': 22.0},
             'b': {'saved_pct': 17.0, 'saved_low': 12.0, 'saved_high': 19.0},  # overlaps a
             'c': {'saved_pct': 11.0, 'saved_low': 10.0, 'saved_high': 12.5},  # overlaps b, not a: next tier
             'd': {'saved_pct': 5.0}}  # no interval: its own tier
    shared = comparable_savings(table)
    assert shared['a'] == shared['b'] == pytest.approx(18.5)
    assert shared['c'] == 11.0 and shared['d'] == 5.0


def test_tied_savings_are_ordered_by_recoverability(tiny_resnet):
    # layer4.1 measured a larger saving than layer3.1, but the intervals overlap: recoverability decides
    lat = {'layer3.1': {'saved_ms': 1.0, 'saved_pct': 10.0, 'saved_low': 6.0, 'saved_high': 14.0},
           'layer4.1': {'saved_ms': 1.2, 'saved_pct': 12.0, 'saved_low': 8.0, 'saved_high': 16.0}}
    x = torch.randn(4, *SIZE[:1], 32, 32, generator=torch.Generator().manual_seed(0))
    settings = scoring.RecoverySettings(steps=2, batch_size=4, resolution_scale=1.0)
    scores = scoring.score_blocks(tiny_resnet, x, x, blocks=list(lat), latency=lat, settings=settings,
                                  progress=False)
    by_rec = sorted(scores, key=lambda s: s.recoverability)
    assert [s.block for s in scores] == [s.block for s in by_rec]
    assert all(s.score == pytest.approx(s.recoverability / 11.0) for s in scores)
    assert scores[0].saved_low is not None


# Issue 15: every argument is checked before the long work starts.
def test_latency_refuses_a_name_that_is_not_a_block(capsys):
    code, _, err = cli(capsys, 'latency', *MODEL, '--per-block', '--blocks', 'layer1.1,fc')
    assert code == 2 and 'Not droppable: fc' in err
