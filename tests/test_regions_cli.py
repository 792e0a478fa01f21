"""Regions on the command line: ``inctrl-run score`` records, ``--masks``, heatmaps of the
whole frame, ``--region-fpr``, and a calibration made before regions were kept."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.references import NumpyBank
from inctrl_runtime.regions import NOT_INSPECTED, REGION

from helpers import CATEGORY, bank_file, calibrated, inctrl_run, random_images

pytestmark = pytest.mark.cli

SIZES = [(320, 240), (240, 330), (263, 263)]  # width x height: landscape, portrait, square


@pytest.fixture
def frames(tmp_path: Path) -> list[Path]:
    """Query PNGs of three shapes, under two folders that share a file name."""
    paths = []
    for i, (width, height) in enumerate(SIZES):
        (array,) = random_images(1, seed=90 + i, size=(height, width))
        path = tmp_path / ("a" if i < 2 else "b") / f"part{i % 2}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(array).save(path)
        paths.append(path)
    return paths


def score(bundle: Path, *args) -> list[dict]:
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--json", *args)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def test_records_masks_and_heatmaps_of_the_whole_frame(
    bundle: Path, inputs: dict, frames: list[Path], tmp_path: Path
) -> None:
    calibrated(bundle, inputs)
    maxima = NumpyBank.load(bank_file(bundle)).calibration.map_maxima
    masks, maps = tmp_path / "masks", tmp_path / "maps"
    records = score(bundle, "--fpr", 0.25, "--region-fpr", 0.5, "--masks", masks,
                    "--heatmaps", maps, "--heatmap-size", 200, *frames)  # fmt: skip
    # named after their images; as "part0" is shared, every name takes its folder's in front
    names = ["a_part0.png", "a_part1.png", "b_part0.png"]
    assert [Path(r["mask"]).name for r in records] == names
    assert [Path(r["heatmap"]).name for r in records] == names
    assert sum(len(r["regions"]) for r in records) > 0  # at 0.5, regions do occur
    for record, (width, height) in zip(records, SIZES, strict=True):
        assert record["frame_size"] == [width, height]
        assert record["region_threshold"] > record["threshold"] * 0  # a threshold, not None
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.shape == (height, width) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, NOT_INSPECTED, REGION}
        assert (mask != NOT_INSPECTED).mean() == pytest.approx(record["inspected_fraction"])
        flagged = mask == REGION
        covered = np.zeros_like(flagged)
        for region in record["regions"]:
            x0, y0, x1, y1 = region["box"]
            covered[y0:y1, x0:x1] = True
            assert flagged[y0:y1, x0:x1].any() and 0 < region["area"] <= (x1 - x0) * (y1 - y0)
            assert region["peak_residual"] > record["region_threshold"]
            at_least = (maxima >= region["peak_residual"] - 1e-5).sum()
            assert region["p_value"] == pytest.approx((1 + at_least) / (len(maxima) + 1))
        assert not (flagged & ~covered).any()  # every region pixel lies in a box
        assert sum(r["area"] for r in record["regions"]) == flagged.sum()
        with Image.open(record["heatmap"]) as heatmap:  # at most 200 px, bar and caption beside
            scale = 200 / max(width, height)  # (the caption may widen the canvas)
            assert heatmap.height - 20 == round(height * scale)
            assert heatmap.width >= round(width * scale) + 64
    square = records[2]
    assert square["inspected_fraction"] == 1.0
    assert records[0]["inspected_fraction"] == pytest.approx(240 / 320, abs=1 / 320)


def test_the_region_rate_follows_the_decision_rate_unless_given(
    bundle: Path, inputs: dict, frames: list[Path]
) -> None:
    calibrated(bundle, inputs)
    same = score(bundle, "--fpr", 0.25, *frames)
    wider = score(bundle, "--fpr", 0.25, "--region-fpr", 0.5, *frames)
    assert same[0]["region_threshold"] > wider[0]["region_threshold"]
    assert sum(map(len, (r["regions"] for r in same))) <= sum(
        map(len, (r["regions"] for r in wider))
    )
    refused = inctrl_run("score", bundle, "--category", CATEGORY, "--region-fpr", 1.5, *frames)
    refused.assert_refused("--region-fpr must be a rate between 0 and 1")
    small = inctrl_run("score", bundle, "--category", CATEGORY, "--heatmap-size", 4, *frames)
    small.assert_refused("--heatmap-size must be a whole number of pixels")


def test_masks_need_a_folder_of_their_own_outside_bundles(
    bundle: Path, inputs: dict, frames: list[Path], tmp_path: Path
) -> None:
    calibrated(bundle, inputs)
    both = inctrl_run("score", bundle, "--category", CATEGORY, "--masks", tmp_path / "x",
                      "--heatmaps", tmp_path / "x", *frames)  # fmt: skip
    both.assert_refused("--heatmaps and --masks both name")
    assert not (tmp_path / "x").exists()
    before = sorted(p.name for p in (bundle / "references").iterdir())
    inside = inctrl_run("score", bundle, "--category", CATEGORY, "--masks",
                        bundle / "references", *frames)  # fmt: skip
    inside.assert_refused("--masks")
    assert "lies inside the bundle" in inside.err
    assert sorted(p.name for p in (bundle / "references").iterdir()) == before


def test_a_calibration_made_before_regions_gives_null_regions_and_one_line(
    bundle: Path, inputs: dict, frames: list[Path], tmp_path: Path
) -> None:
    calibrated(bundle, inputs)
    path = bank_file(bundle)
    bank = NumpyBank.load(path)
    replace(bank, calibration=replace(bank.calibration, map_maxima=None)).save(path)
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.25, "--json",
                         "--masks", tmp_path / "m", *frames)  # fmt: skip
    assert outcome.code == 0, outcome.err
    (line,) = outcome.err.splitlines()
    assert "calibrate again" in line and "no regions" in line
    for record in json.loads(outcome.out):
        assert record["regions"] is None and record["region_threshold"] is None
        assert record["anomalous"] is not None  # decisions still made
        mask = np.asarray(Image.open(record["mask"]))
        assert REGION not in mask  # no threshold, no region
    shots = inctrl_run("score", bundle, "--category", CATEGORY, "--json",
                       "--shot", inputs["shots"][0], *frames)  # fmt: skip
    assert all(r["regions"] is None for r in json.loads(shots.out))  # prompts given: none


def test_info_shows_the_region_thresholds(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    outcome = inctrl_run("info", bundle, "--json")
    assert outcome.code == 0, outcome.err
    calibration = json.loads(outcome.out)["categories"][CATEGORY]["calibration"]
    assert set(calibration["region_thresholds"]) == {"0.01", "0.05", "0.1"}
    table = inctrl_run("info", bundle)
    assert "region threshold @ 0.1" in table.out
