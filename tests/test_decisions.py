"""Split-conformal decisions (``inctrl_runtime.decisions``) on hand-made score lists: p-values,
the order-statistic threshold, ties, calibrations too small for a rate, and the one codec of
the decision fields (records and served arrays)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inctrl_runtime.decisions import (
    DECISION_FIELDS,
    TARGET_FPRS,
    TIE_TOLERANCE,
    Calibration,
    check_fpr,
    decide,
    decision_arrays,
    decision_fields,
    decoded_decision,
    min_normals,
    p_values,
    threshold,
)
from inctrl_runtime.errors import InputError

RATES = (*TARGET_FPRS, 0.07, 0.2, 0.25, 0.3, 0.5, 0.7)


@pytest.mark.unit
def test_p_values_count_the_calibration_scores_at_or_above() -> None:
    calibration = np.array([1.0, 2.0, 3.0, 4.0])  # n = 4: p = (1 + #{>= s}) / 5
    p = p_values(calibration, [0.0, 1.0, 2.5, 4.0, 5.0])
    assert p.tolist() == pytest.approx([5 / 5, 5 / 5, 3 / 5, 2 / 5, 1 / 5])
    # Ties: a score equal to calibration scores counts all of them, and so does one above them
    # by less than the tie tolerance (a batch's wobble); one above by more counts none.
    tied = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    scores = [2.0, 2.0 + TIE_TOLERANCE / 2, 2.0 + 2 * TIE_TOLERANCE, 3.5]
    assert p_values(tied, scores).tolist() == pytest.approx([5 / 6, 5 / 6, 2 / 6, 1 / 6])
    assert p_values(np.array([]), [0.3]).tolist() == [1.0]  # no calibration: never anomalous


@pytest.mark.unit
def test_threshold_is_the_order_statistic() -> None:
    calibration = np.arange(1, 20) / 10  # n = 19: 0.1 .. 1.9
    tie = TIE_TOLERANCE  # the threshold is the order statistic plus the tie tolerance
    assert threshold(calibration, 0.1) == pytest.approx(1.8 + tie)  # ceil(20 * 0.9) = 18th
    assert threshold(calibration, 0.05) == pytest.approx(1.9 + tie)  # ceil(20 * 0.95): max
    assert threshold(calibration, 0.5) == pytest.approx(1.0 + tie)  # 10th
    assert threshold(np.arange(99.0), 0.01) == 98.0 + tie  # ceil(100 * 0.99) = 99th: the max
    # (n + 1)(1 - 0.7) = 10 * 0.30000000000000004 in floats: still the 3rd, not the 4th.
    assert threshold(np.arange(9.0), 0.7) == 2.0 + tie
    # Ties: the 3rd of four is 1.0; a score equal to it is not above it, and not flagged.
    tied = np.array([1.0, 1.0, 1.0, 2.0])
    assert threshold(tied, 0.5) == 1.0 + tie
    assert decide(tied, [1.0, 1.5], 0.5).anomalous.tolist() == [False, True]  # p = 1, 0.4


@pytest.mark.unit
@pytest.mark.parametrize("alpha", RATES)
def test_too_small_a_calibration_has_no_threshold(alpha: float) -> None:
    n = min_normals(alpha)
    assert n == math.ceil(round(1 / alpha - 1, 9))
    assert threshold(np.arange(float(n)), alpha) is not None
    assert threshold(np.arange(float(n - 1)), alpha) is None
    assert threshold(np.array([]), alpha) is None
    small = decide(np.arange(1.0, n), [0.5, 1e9], alpha)  # n - 1 scores
    assert small.threshold is None and small.anomalous is None
    assert small.p_value.tolist() == pytest.approx([1.0, 1 / n])  # p-values are still given
    assert (min_normals(0.01), min_normals(0.05), min_normals(0.1)) == (99, 19, 9)


@pytest.mark.unit
@pytest.mark.parametrize("alpha", RATES)
def test_p_value_at_most_alpha_is_a_score_above_the_threshold(alpha: float) -> None:
    rng = np.random.default_rng(7)
    fewest = min_normals(alpha)
    for n in (fewest, fewest + 1, 3 * fewest + 2, 250):
        calibration = np.sort(rng.integers(0, 12, n).astype(np.float32))  # many ties
        scores = np.arange(-1, 14, 0.5, dtype=np.float32)  # on, between and beyond them
        decisions = decide(calibration, scores, alpha)
        assert decisions.threshold == threshold(calibration, alpha)
        assert decisions.anomalous.tolist() == (scores > decisions.threshold).tolist()
        assert decisions.anomalous.tolist() == (p_values(calibration, scores) <= alpha).tolist()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("alpha", "n"),
    [(a, n) for a in TARGET_FPRS for n in (9, 19, 99, 100, 250) if n >= min_normals(a)],
)
def test_a_new_normal_is_flagged_at_most_alpha_of_the_time(alpha: float, n: int) -> None:
    """Exchangeable distinct scores: a new normal takes each of the n + 1 ranks among the
    calibration equally often, and is flagged at exactly floor(alpha (n + 1)) of them."""
    calibration = np.arange(float(n))
    new = np.arange(n + 1) - 0.5  # one score in each gap: each rank once
    rate = decide(calibration, new, alpha).anomalous.mean()
    assert rate == math.floor(round(alpha * (n + 1), 9)) / (n + 1)
    assert alpha - 1 / (n + 1) < rate <= alpha


@pytest.mark.unit
def test_calibration_sorts_its_scores_with_their_digests() -> None:
    calibration = Calibration.of(np.array([0.3, 0.1, 0.2]), ["c", "a", "b"], "cpu", "fp32", "e")
    assert calibration.scores.dtype == np.float32 and calibration.n == 3
    assert calibration.scores.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert calibration.digests == ("a", "b", "c")
    assert calibration.decide(np.array([0.25]), 0.5).p_value.tolist() == [0.5]  # (1 + 1) / 4
    assert calibration.too_small_for(0.5) == ""
    message = calibration.too_small_for(0.1)
    assert "at least 9 calibration images" in message and "has 3" in message
    assert "0.25" in message  # the lowest rate three images allow: 1 / (3 + 1)


@pytest.mark.unit
@pytest.mark.parametrize("alpha", [0, 1, -0.1, 1.5, float("nan"), "0.1", True, None])
def test_rates_outside_0_and_1_are_refused(alpha) -> None:
    with pytest.raises(InputError, match="--fpr must be a rate between 0 and 1"):
        check_fpr(alpha)
    assert check_fpr(0.05) == 0.05


@pytest.mark.unit
@pytest.mark.parametrize("n", [None, 5, 19])  # uncalibrated; too few for 0.1; enough for 0.1
def test_the_decision_codec_reads_back_what_it_writes(n: int | None) -> None:
    """Records (None where there is no decision) and arrays (NaN / false there) are one codec:
    each row of the arrays reads back as the record's fields, at float32 as served."""
    scores = np.array([0.05, 0.4, 0.85, 2.0], np.float32)
    calibration = None
    if n is not None:
        calibration = Calibration.of(np.linspace(0, 0.8, n), ["d"] * n, "cpu", "fp32", "0" * 64)
    records = decision_fields(calibration, scores, 0.1)
    served = decision_arrays(calibration, scores, 0.1)  # float32, as the Triton head answers
    assert [list(record) for record in records] == [list(DECISION_FIELDS)] * len(scores)
    for row, record in enumerate(records):
        read = decoded_decision(served, row)
        assert list(read) == list(record)
        for name in DECISION_FIELDS:
            if record[name] is None or isinstance(record[name], bool):
                assert read[name] is record[name], name
            else:
                assert read[name] == pytest.approx(record[name], rel=1e-6), name
    if calibration is None:
        assert all(value is None for record in records for value in record.values())
    elif n == 5:  # p-values, no threshold at 0.1
        assert all(r["p_value"] is not None and r["threshold"] is None for r in records)
    else:
        decided = calibration.decide(scores, 0.1)
        assert [r["anomalous"] for r in records] == decided.anomalous.tolist()
        assert [r["p_value"] for r in records] == decided.p_value.tolist()  # float64, exact
