"""A category's drift monitor on disk (``inctrl_runtime.drift_store``): a restart continues the
same martingale, two writer processes lose no part and take them in one order, a tail no
snapshot counts is cut off, and a new calibration, a new bank or ``reset`` start it again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.drift import MonitorState
from inctrl_runtime.drift_store import RECORD, DriftMonitor
from inctrl_runtime.errors import InputError
from inctrl_runtime.references import load_registered

from helpers import CATEGORY, random_images, register_served

pytestmark = pytest.mark.unit
OTHER = "metal_nut"


@pytest.fixture
def calibrated(bundle: Path) -> Path:
    """A private tiny bundle: candle calibrated (12 normals), metal_nut registered only."""
    register_served(bundle)
    return bundle


def monitor(bundle: Path, category: str = CATEGORY) -> DriftMonitor:
    return DriftMonitor(bundle, category, load_registered(Bundle.open(bundle), category))


def stream(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(count).astype(np.float32)


def replayed(bundle: Path, scores: np.ndarray) -> np.ndarray:
    """The evidence one process that took ``scores`` in this order from the start gets."""
    ours = monitor(bundle)
    state = MonitorState.start(ours.bank.calibration.scores, ours.seed)
    return state.observe(scores)


def test_a_restart_continues_the_same_martingale(calibrated: Path) -> None:
    scores = stream(300)
    first = monitor(calibrated).take(scores[:120], 0.01)
    later = monitor(calibrated).take(scores[120:], 0.01)  # another process, after a restart
    evidence = [d.evidence for d in first + later]
    assert np.array_equal(evidence, replayed(calibrated, scores))
    assert [d.observed for d in first + later] == list(range(1, 301))
    history = monitor(calibrated).history()
    assert history.dtype == RECORD and len(history) == 300
    assert np.array_equal(history["score"], scores)
    assert np.array_equal(history["evidence"], evidence)
    assert (calibrated / "monitors" / f"{CATEGORY}.log").stat().st_size == 300 * 12


WRITER = """
import sys
import numpy as np
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.drift_store import DriftMonitor
from inctrl_runtime.references import load_registered
bundle, seed = sys.argv[1], int(sys.argv[2])
scores = np.random.default_rng(seed).random(200).astype(np.float32) + seed
for start in range(0, 200, 5):  # 40 small updates, interleaving with the other writer's
    bank = load_registered(Bundle.open(bundle), "candle")
    DriftMonitor(bundle, "candle", bank).take(scores[start:start + 5], 0.01)
"""


def test_two_writers_lose_no_part_and_agree_on_one_order(calibrated: Path) -> None:
    writers = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(calibrated), str(seed)])
        for seed in (10, 20)
    ]
    for writer in writers:
        assert writer.wait(timeout=120) == 0
    history = monitor(calibrated).history()
    assert len(history) == 400  # every part of both
    mine = np.random.default_rng(10).random(200).astype(np.float32) + 10
    theirs = np.random.default_rng(20).random(200).astype(np.float32) + 20
    assert sorted(history["score"].tolist()) == sorted([*mine.tolist(), *theirs.tolist()])
    assert np.array_equal(history["score"][history["score"] < 15], mine)  # each in its order
    assert np.array_equal(history["evidence"], replayed(calibrated, history["score"]))
    assert monitor(calibrated).status().observed == 400


def test_an_uncommitted_tail_is_cut_off(calibrated: Path) -> None:
    ours = monitor(calibrated)
    ours.take(stream(50), 0.01)
    with open(ours.log, "ab") as log:  # a process that died between its append and snapshot
        log.write(np.zeros(7, RECORD).tobytes())
    again = monitor(calibrated)
    assert again.status().observed == 50
    assert ours.log.stat().st_size == 50 * RECORD.itemsize
    after = again.take(stream(10, seed=1), 0.01)
    assert [d.observed for d in after] == list(range(51, 61))


def test_a_new_calibration_a_new_bank_and_reset_start_again(calibrated: Path) -> None:
    monitor(calibrated).take(stream(40), 0.01)
    assert monitor(calibrated).status().observed == 40
    detector = Detector.open(calibrated)
    detector.calibrate(CATEGORY, random_images(12, seed=31))  # another calibration
    assert monitor(calibrated).status().observed == 0
    monitor(calibrated).take(stream(5), 0.01)
    monitor(calibrated).reset()
    status = monitor(calibrated).status()
    assert (status.observed, status.evidence, status.peak) == (0, 1.0, 1.0)
    with pytest.raises(InputError, match="'metal_nut' is not calibrated.*inctrl-run calibrate"):
        monitor(calibrated, OTHER)


def test_an_alarm_is_read_from_the_peak_at_any_delta(calibrated: Path) -> None:
    ours = monitor(calibrated)
    calibration = ours.bank.calibration.scores
    drifted = np.full(400, calibration.max() + 1, np.float32)  # far above every normal
    drifts = ours.take(drifted, 0.05)
    fired = next(d.observed for d in drifts if d.alarm)
    status = monitor(calibrated).status()
    assert status.alarm(0.05) and status.peak >= 20 and fired <= status.peak_at <= 400
    assert monitor(calibrated).take(stream(1), 0.05)[0].alarm  # raised until a reset
    loose = [d for d in DriftMonitor(calibrated, CATEGORY, ours.bank).history()["evidence"]]
    assert loose[fired - 2] < 20 <= loose[fired - 1]


def test_a_damaged_snapshot_is_one_line_and_a_reset_mends_it(calibrated: Path) -> None:
    ours = monitor(calibrated)
    ours.take(stream(5), 0.01)
    ours.snapshot_path.write_text("{not json")
    with pytest.raises(InputError, match=r"not a drift monitor snapshot.*monitor --reset"):
        monitor(calibrated).status()
    monitor(calibrated).reset()
    assert monitor(calibrated).status().observed == 0
