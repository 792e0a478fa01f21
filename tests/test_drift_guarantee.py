"""The drift monitor's promises, over many seeded streams built from stored scores
(``inctrl_bench.drift``): without drift its alarm fires in at most a share delta of the streams,
and after a drift of the embedded demo model's line it fires in the cases docs/drift.md reports
as detected, upward and downward.

Each stream is a fresh permutation of normals scored once: its first 100 are its calibration
(re-drawn per stream), the next ones its parts, so that under no drift it is exchangeable with
its calibration. The bound asserted: with S streams each alarming with probability at most
delta (Ville's inequality), the count of alarming streams is at most the 0.999 quantile of
Binomial(S, delta); a correct monitor fails this with probability under 0.001 (and the seeds are
fixed, so the test gives the same answer each run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from inctrl_bench.drift import (
    DRIFTS,
    alarm_rates,
    drift_streams,
    null_streams,
    render_normals,
    summarize_drift,
)
from inctrl_runtime.detector import Detector

from helpers import CATEGORY, random_images

STREAMS = 200
LINE = "synth_wood"
# The drifts docs/drift.md reports as detected for the demo line, and the way each moves the
# scores (-1: down, the parts look "more normal").
DETECTED = {
    "brighter light (x1.3)": 1,
    "darker light (x0.7)": 1,
    "lower contrast (x0.6)": 1,
    "higher contrast (x1.5)": -1,
    "rotated 3 degrees": 1,
    "shifted 4%": 1,
    "another material": 1,
}


def bound(delta: float, streams: int = STREAMS) -> int:
    """The most alarming streams a monitor whose false-alarm probability is delta may give."""
    return int(stats.binom.ppf(0.999, streams, delta))


@pytest.fixture(scope="module")
def tiny_scores(tiny_bundle: Path, tmp_path_factory) -> np.ndarray:
    """700 seeded random normals scored once by the tiny model against 2 shots."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("null") / "bundle"))
    detector = Detector.open(bundle)
    detector.register(CATEGORY, random_images(2, seed=140, size=(240, 240)))
    images = np.stack(random_images(700, seed=141, size=(240, 240)))
    return detector.score_arrays(CATEGORY, detector.pixels(list(images)), batch_size=64).score


@pytest.mark.unit
def test_without_drift_the_alarm_rate_is_at_most_delta(tiny_scores: np.ndarray) -> None:
    rates = alarm_rates(null_streams(tiny_scores.astype(float), STREAMS, length=500))
    for delta in (0.01, 0.05):
        assert rates["jumper"][str(delta)] * STREAMS <= bound(delta), (delta, rates)
        assert rates["power"][str(delta)] * STREAMS <= bound(delta), (delta, rates)


@pytest.fixture(scope="module")
def demo_line(tmp_path_factory) -> dict[str, np.ndarray]:
    """The demo model's scores of 400 normals of a synthetic line, and of the same normals
    under each drift reported as detected (another material: 400 normals of another line)."""
    from inctrl_export.bundle import export_bundle

    folder = tmp_path_factory.mktemp("demo")
    export_bundle(folder / "bundle", None, [LINE, "synth_fabric"], verify=False)
    detector = Detector.open(folder / "bundle")
    normals = render_normals(LINE, 402)
    detector.register(LINE, normals[:2])

    def scores(pictures: list) -> np.ndarray:
        return detector.score_arrays(LINE, pictures, batch_size=32).score.astype(float)

    pool = normals[2:]
    found = {
        "normals": scores(pool),
        "another material": scores(render_normals("synth_fabric", 400)),
    }
    for name in DETECTED:
        if name != "another material":
            found[name] = scores([DRIFTS[name](picture) for picture in pool])
    return found


@pytest.mark.cli
@pytest.mark.parametrize(("drift", "direction"), DETECTED.items())
def test_a_drift_of_the_demo_line_is_detected(demo_line, drift: str, direction: int) -> None:
    """200 streams: 300 normals, then 300 drifted ones. Before the switch the alarm rate (at
    delta 0.01) stays within the bound; after it, the alarm fires in at least 95% of them."""
    normals, drifted = demo_line["normals"], demo_line[drift]
    assert np.sign(np.median(drifted) - np.median(normals)) == direction  # up, or down
    summary = summarize_drift(drift_streams(normals, drifted, STREAMS, 300, 300), 300)["jumper"]
    assert summary["alarmed_before_switch"] * STREAMS <= bound(0.01), summary
    assert summary["detected"] >= 0.95, summary
