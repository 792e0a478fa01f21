"""The calibration guarantee, measured: split-conformal thresholds from n = 100 normal images
flag new normal images at the target rate, on data and scores from the real commands.

``inctrl data synth`` writes one category with 210 normal images (140 train/good, 70
test/good); ``inctrl score`` (the embedded DEMO model) scores the 208 that are not its k = 2
fixed prompts, once. Then SPLITS seeded splits each take 100 of them to calibrate and the other
108 as new normals: at each target ALPHA the mean false-positive rate over splits must lie in
[ALPHA - 1 / (n + 1) - 0.005, ALPHA + 0.005]. (For distinct scores its expectation is
floor(ALPHA (n + 1)) / (n + 1): 1/101, 5/101 and 10/101 for 0.01, 0.05 and 0.1.)

Measured (seed 5 data, 200 splits; ``python tests/test_calibration_guarantee.py`` prints it):
the mean false-positive rate over splits, its standard deviation across splits, min and max:

| target | mean | std | min | max |
| ---: | ---: | ---: | ---: | ---: |
| 0.01 | 0.0081 | 0.0125 | 0.0000 | 0.0741 |
| 0.05 | 0.0490 | 0.0288 | 0.0000 | 0.1389 |
| 0.1 | 0.0956 | 0.0411 | 0.0185 | 0.2315 |

The mean is what the guarantee bounds; the std is how far the rate of one calibration of 100
images, checked on 108 other normals, lands from it.

The region guarantee on the same records: the region threshold from the 100 calibration images'
map maxima (``max_patch_residual``), and a held-out normal gets a region when any pixel of its
map in the frame (``regions.frame_map``) lies above it. The mean share of held-out normals with
any region must lie in [ALPHA - 1 / (n + 1) - 0.01, ALPHA + 0.01] (seed 1 splits):

| target | mean | std | min | max |
| ---: | ---: | ---: | ---: | ---: |
| 0.05 | 0.0476 | 0.0302 | 0.0000 | 0.1296 |
| 0.1 | 0.0931 | 0.0387 | 0.0185 | 0.2315 |
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from inctrl.cli import main
from inctrl_runtime.decisions import TARGET_FPRS, decide
from inctrl_runtime.regions import Framing, RegionRule, frame_map

from helpers import run_main

SEED = 5
CATEGORY = "synth_fabric"  # the first synthetic category: the one --categories 1 writes
TRAIN_GOOD = 140  # --images-per-category: test/good gets half, 70
CALIBRATION = 100
SPLITS = 200
PROMPTS = 2
REGION_FPRS = (0.05, 0.1)


def normal_records(root: Path) -> list[dict]:
    """Generate the data, then score every normal image but the k fixed prompts, once."""
    data = root / "synth"
    synth = run_main(
        main, "data", "synth", "--out", data, "--seed", SEED, "--categories", 1,
        "--images-per-category", TRAIN_GOOD, "--size", 240, "--json",
    )  # fmt: skip
    assert synth.code == 0, synth.err
    folder = data / CATEGORY
    normals = sorted((folder / "train" / "good").iterdir()) + sorted(
        (folder / "test" / "good").iterdir()
    )
    prompts, rest = normals[:PROMPTS], normals[PROMPTS:]
    shots = [arg for prompt in prompts for arg in ("-s", prompt)]
    scored = run_main(
        main, "score", "--category", CATEGORY, *shots, "--batch-size", 32, "--json", *rest
    )
    assert scored.code == 0, scored.err
    records = json.loads(scored.out)
    assert [record["image"] for record in records] == [str(path) for path in rest]
    return records


def normal_scores(records: list[dict]) -> np.ndarray:
    return np.array([record["score"] for record in records], dtype=np.float32)


def region_peaks(records: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Each image's map maximum on the 15 x 15 grid (what a calibration keeps) and in its frame
    (what decides whether it gets a region: any pixel above the region threshold)."""
    grid = np.array([record["max_patch_residual"] for record in records], dtype=np.float32)
    framed = np.array(
        [
            np.nanmax(frame_map(record["patch_residual_map"], Framing(*record["frame_size"], 240)))
            for record in records
        ]
    )
    return grid, framed


def region_flag_rates(
    grid: np.ndarray, framed: np.ndarray, n: int = CALIBRATION, splits: int = SPLITS
) -> dict[float, np.ndarray]:
    """Per rate, the share of held-out normals that get any region, on each seeded split:
    the region threshold from n calibration images' grid maxima, a region wherever the map in
    the frame lies above it."""
    rng = np.random.default_rng(1)
    rates: dict[float, list[float]] = {alpha: [] for alpha in REGION_FPRS}
    for _ in range(splits):
        order = rng.permutation(len(grid))
        maxima, new = np.sort(grid[order[:n]]), framed[order[n:]]
        for alpha in REGION_FPRS:
            rates[alpha].append(float((new > RegionRule.at(maxima, alpha).threshold).mean()))
    return {alpha: np.array(values) for alpha, values in rates.items()}


def false_positive_rates(
    scores: np.ndarray, n: int = CALIBRATION, splits: int = SPLITS, seed: int = 0
) -> dict[float, np.ndarray]:
    """Per target rate, the false-positive rate on the held-out normals of each seeded split
    of ``scores`` into n calibration scores and the rest."""
    rng = np.random.default_rng(seed)
    rates: dict[float, list[float]] = {alpha: [] for alpha in TARGET_FPRS}
    for _ in range(splits):
        order = rng.permutation(len(scores))
        calibration, new = np.sort(scores[order[:n]]), scores[order[n:]]
        for alpha in TARGET_FPRS:
            rates[alpha].append(float(decide(calibration, new, alpha).anomalous.mean()))
    return {alpha: np.array(values) for alpha, values in rates.items()}


def report(rates: dict[float, np.ndarray]) -> str:
    """The measured rates as the markdown table of this module's docstring."""
    lines = ["| target | mean | std | min | max |", "| ---: | ---: | ---: | ---: | ---: |"]
    for alpha, values in rates.items():
        lines.append(
            f"| {alpha:g} | {values.mean():.4f} | {values.std():.4f} | {values.min():.4f} | "
            f"{values.max():.4f} |"
        )
    return "\n".join(lines)


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> list[dict]:
    return normal_records(tmp_path_factory.mktemp("guarantee"))


@pytest.fixture(scope="module")
def rates(records) -> dict[float, np.ndarray]:
    scores = normal_scores(records)
    assert len(scores) == TRAIN_GOOD + TRAIN_GOOD // 2 - PROMPTS >= CALIBRATION + 100
    assert len(np.unique(scores)) > 0.95 * len(scores)  # hardly any ties: the rates are sharp
    measured = false_positive_rates(scores)
    print(f"\n{report(measured)}")  # shown with pytest -s
    return measured


@pytest.mark.cli
@pytest.mark.parametrize("alpha", TARGET_FPRS)
def test_mean_false_positive_rate_over_splits_is_the_target(rates, alpha: float) -> None:
    values = rates[alpha]
    assert len(values) == SPLITS
    low, high = alpha - 1 / (CALIBRATION + 1) - 0.005, alpha + 0.005
    assert low <= values.mean() <= high, report(rates)
    assert values.std() > 0  # each split measures its own rate: the splits do differ


@pytest.mark.cli
@pytest.mark.parametrize("alpha", REGION_FPRS)
def test_mean_good_part_region_flag_rate_over_splits_is_at_most_the_rate(records, alpha) -> None:
    grid, framed = region_peaks(records)
    assert (framed <= grid + 1e-6).all()  # bilinear: the frame's map never exceeds the grid's
    rates = region_flag_rates(grid, framed)
    values = rates[alpha]
    assert len(values) == SPLITS
    low, high = alpha - 1 / (CALIBRATION + 1) - 0.01, alpha + 0.01
    assert low <= values.mean() <= high, report(rates)
    assert values.std() > 0


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as work:
        found = normal_records(Path(work))
        sys.stdout.write(report(false_positive_rates(normal_scores(found))) + "\n\n")
        sys.stdout.write(report(region_flag_rates(*region_peaks(found))) + "\n")
