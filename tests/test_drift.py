"""The drift monitor's arithmetic (``inctrl_runtime.drift``) on hand-made and seeded numbers:
the online conformal p-values against their definition, their uniformity and independence
under exchangeability, the Simple Jumper's bets, and the alarm in both directions."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from inctrl_runtime.drift import BETS, JUMP, MonitorState, Ranks, check_delta, tie_breaks
from inctrl_runtime.errors import InputError

pytestmark = pytest.mark.unit


def brute_p_value(history: list[float], score: float, theta: float) -> float:
    greater = sum(h > score for h in history)
    equal = sum(h == score for h in history) + 1  # itself
    return (greater + theta * equal) / (len(history) + 1)


def test_p_values_are_their_definition_with_ties() -> None:
    rng = np.random.default_rng(0)
    calibration = rng.integers(0, 5, 40).astype(float)  # many ties
    ranks = Ranks(calibration)
    history = list(calibration)
    for score, theta in zip(rng.integers(0, 6, 3000).astype(float), rng.random(3000), strict=True):
        want = brute_p_value(history, score, theta)
        assert ranks.p_value(score, theta) == pytest.approx(want, abs=1e-12)
        history.append(score)
    assert len(ranks) == len(history)  # the tail merged into the sorted array on the way


def test_tie_breaks_are_uniform_and_a_function_of_the_part() -> None:
    whole = tie_breaks(7, 0, 10_000)
    assert np.array_equal(np.concatenate([tie_breaks(7, 0, 3), tie_breaks(7, 3, 9_997)]), whole)
    assert not np.array_equal(tie_breaks(8, 0, 10_000), whole)
    assert whole.min() >= 0 and whole.max() < 1
    assert stats.kstest(whole, "uniform").pvalue > 1e-3


def test_online_p_values_are_uniform_and_independent_under_exchangeability() -> None:
    """Scores with ties (rounded), calibration and stream drawn alike: the stream's p-values
    pass a Kolmogorov-Smirnov test of uniformity and have no lag-1 correlation."""
    rng = np.random.default_rng(1)
    values = []
    for seed in range(20):
        scores = np.round(rng.normal(size=600), 1)
        state = MonitorState.start(scores[:100], seed)
        thetas = tie_breaks(seed, 0, 500)
        pairs = zip(scores[100:], thetas, strict=True)
        values.append([state.ranks.p_value(s, t) for s, t in pairs])
    p = np.asarray(values)
    assert stats.kstest(p.ravel(), "uniform").pvalue > 1e-3
    lagged = np.corrcoef(p[:, :-1].ravel(), p[:, 1:].ravel())[0, 1]
    assert abs(lagged) < 4 / np.sqrt(p.size)


def jumper_step(capitals: np.ndarray, p: float) -> np.ndarray:
    """The Simple Jumper's accounts after one p-value, as the docs write it: a share J of the
    total spread evenly again, then each account times its bet 1 + e (p - 1/2)."""
    total = capitals.sum()
    return ((1 - JUMP) * capitals + JUMP * total / 3) * (1 + BETS * (p - 0.5))


def test_the_evidence_is_the_jumpers_total_over_the_online_p_values() -> None:
    rng = np.random.default_rng(5)
    calibration, parts = rng.random(50), rng.random(400)
    state = MonitorState.start(calibration, seed=9)
    evidence = np.concatenate([state.observe(parts[:150]), state.observe(parts[150:])])
    ranks, capitals = Ranks(calibration), np.full(3, 1 / 3)
    for index, (score, theta) in enumerate(zip(parts, tie_breaks(9, 0, 400), strict=True)):
        capitals = jumper_step(capitals, ranks.p_value(score, theta))
        assert evidence[index] == pytest.approx(capitals.sum(), rel=1e-12)
    assert state.capitals == pytest.approx(capitals, rel=1e-12)
    assert state.peak == evidence.max() and state.peak_at == evidence.argmax() + 1


def test_the_jumper_bets_fairly_and_on_both_sides() -> None:
    capitals = np.array([0.2, 0.5, 0.3])
    grid = (np.arange(1000) + 0.5) / 1000  # midpoints: exact for a bet linear in p
    mean = np.mean([jumper_step(capitals, p).sum() for p in grid])
    assert mean == pytest.approx(capitals.sum(), rel=1e-9)  # each bet averages 1: a martingale
    assert jumper_step(capitals, 0.0)[0] > capitals[0] and jumper_step(capitals, 1.0)[2] > 0.3


@pytest.mark.parametrize("shift", [0.6, -0.6])
def test_a_change_after_a_long_calm_alarms_in_either_direction(shift: float) -> None:
    """2000 in-control parts, then scores shifted up (more false positives) or down (lower
    recall): the evidence stays low before the change and passes 1 / delta after it."""
    rng = np.random.default_rng(2)
    state = MonitorState.start(rng.normal(size=200), seed=3)
    calm = state.take(rng.normal(size=2000), 0.01)
    assert not calm[-1].alarm and max(d.evidence for d in calm) < 100
    after = state.take(rng.normal(loc=shift, size=1000), 0.01)
    first = next(d.observed for d in after if d.alarm)
    assert 2000 < first < 2400, first
    assert all(d.alarm for d in after if d.observed >= first)  # it stays raised
    assert state.alarm(0.01) and state.observed == 3000


def test_deltas_are_probabilities() -> None:
    assert check_delta(0.05) == 0.05
    for bad in (0, 1, -0.1, float("nan"), "0.1"):
        with pytest.raises(InputError, match="--drift-delta must be a probability"):
            check_delta(bad)


def test_a_bulk_read_back_ranks_as_one_by_one() -> None:
    rng = np.random.default_rng(6)
    earlier = rng.integers(0, 50, 3000).astype(float)
    one_by_one, bulk = Ranks(earlier[:10]), Ranks(earlier[:10])
    for score in earlier[10:]:  # a tail merged every 1024 scores
        one_by_one.add([score])
    bulk.add(earlier[10:])  # 2990 scores at once: one merge
    assert np.array_equal(np.sort(earlier), bulk.sorted) and len(one_by_one) == 3000
    for score in (0.0, 17.0, 49.0, 60.0):
        assert one_by_one.p_value(score, 0.5) == bulk.p_value(score, 0.5)
