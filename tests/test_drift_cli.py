"""``inctrl-run score --monitor`` and ``inctrl-run monitor`` on the tiny bundle: records carry
the monitor's state part by part across runs, an alarm is said once on stderr, the command
shows the status, draws the evidence and resets, and a monitor is refused where it cannot
work."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.cli import main as inctrl_run
from inctrl_runtime.detector import Detector

from helpers import CATEGORY, png_bytes, random_images, register_served, run_main

pytestmark = pytest.mark.cli
OTHER = "metal_nut"


@pytest.fixture
def calibrated(bundle: Path) -> Path:
    register_served(bundle)  # candle calibrated on 12 normals, metal_nut registered only
    return bundle


def write_images(folder: Path, images: list[np.ndarray], prefix: str = "q") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, image in enumerate(images):
        files.append(folder / f"{prefix}{index:03d}.png")
        files[-1].write_bytes(png_bytes(image))
    return files


def score(bundle: Path, files: list[Path], *options: object) -> tuple[list[dict], str]:
    outcome = run_main(inctrl_run, "score", bundle, "--category", CATEGORY, "--monitor",
                       "--json", "--batch-size", 4, *options, *files)  # fmt: skip
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out), outcome.err


def test_records_carry_the_monitor_across_runs(calibrated: Path, tmp_path: Path) -> None:
    files = write_images(tmp_path / "q", random_images(10, seed=40))
    first, _ = score(calibrated, files[:6])
    second, _ = score(calibrated, files[6:])
    records = first + second
    assert [r["drift"]["observed"] for r in records] == list(range(1, 11))
    assert list(records[0])[-2:] == ["drift", "patch_residual_map"]
    history = Detector.open(calibrated).monitor(CATEGORY).history()
    assert [r["drift"]["evidence"] for r in records] == pytest.approx(history["evidence"])
    assert history["score"] == pytest.approx([r["score"] for r in records], abs=1e-6)
    plain = run_main(inctrl_run, "score", calibrated, "--category", CATEGORY, "--json", files[0])
    assert json.loads(plain.out)[0]["drift"] is None  # not monitored: not a part
    assert Detector.open(calibrated).monitor(CATEGORY).status().observed == 10


def test_an_alarm_is_said_once_and_shown(calibrated: Path, tmp_path: Path) -> None:
    # flat greys, nothing like the noisy normals: the scores drift down (they look "more
    # normal"), and recall would fall; each grey its own, so no two parts tie (the monitor's
    # tie-breaks are seeded by the bank's digest, which its calibration's date changes)
    flat = [np.full((260, 300, 3), 100 + level, np.uint8) for level in range(40)]
    files = write_images(tmp_path / "flat", flat)
    records, err = score(calibrated, files)
    alarmed = [r["drift"]["alarm"] for r in records]
    assert alarmed[-1] and not alarmed[0]
    first = alarmed.index(True)
    assert all(alarmed[first:]) and records[first]["drift"]["evidence"] >= 100
    assert err.count("drift alarm:") == 1, err
    assert f"by part {first + 1}," in err and "--reset" in err
    table = run_main(inctrl_run, "score", calibrated, "--category", CATEGORY, "--monitor",
                     files[0])  # fmt: skip
    assert table.code == 0 and "ALARM" in table.out and "drift" in table.out
    assert "by part 41," in table.err  # raised before this run: said again, once
    table_flagged = "ANOMALOUS" in table.out
    shown = run_main(inctrl_run, "monitor", calibrated, "--category", CATEGORY, "--json")
    status = json.loads(shown.out)
    assert status["observed"] == 41 and status["alarm"] and status["delta"] == 0.01
    assert status["peak"] >= 100 and status["calibration"] == 12
    assert status["direction"] == "down"  # the bet on lower scores won
    assert status["flagged"] == sum(bool(r["anomalous"]) for r in records) + int(table_flagged)
    plot = tmp_path / "drift.png"
    drawn = run_main(inctrl_run, "monitor", calibrated, "--category", CATEGORY, "--plot", plot)
    assert drawn.code == 0 and "history" in drawn.out and "ALARM" in drawn.out
    picture = np.asarray(Image.open(plot).convert("RGB"))
    assert picture.shape == (380, 900, 3)
    assert ((picture[..., 0] > 180) & (picture[..., 1] < 80)).sum() > 100  # the red alarm line
    assert (picture != 255).any(axis=2).mean() > 0.02  # drawn, not blank
    reset = run_main(inctrl_run, "monitor", calibrated, "--category", CATEGORY, "--reset",
                     "--json")  # fmt: skip
    assert json.loads(reset.out)["observed"] == 0 and "starts again" in reset.err


def test_a_monitor_is_refused_where_it_cannot_work(calibrated: Path, tmp_path: Path) -> None:
    files = write_images(tmp_path / "q", random_images(1, seed=41))
    cases = [
        (("--category", OTHER, "--monitor", *files), "'metal_nut' is not calibrated"),
        (("--category", CATEGORY, "--monitor", "--shot", files[0], *files), "leave out --shot"),
        (("--category", CATEGORY, "--monitor", "--drift-delta", 1, *files), "--drift-delta"),
    ]
    for args, phrase in cases:
        run_main(inctrl_run, "score", calibrated, *args).assert_refused(phrase)
    run_main(inctrl_run, "monitor", calibrated, "--category", OTHER).assert_refused(
        "inctrl-run calibrate"
    )
    run_main(inctrl_run, "monitor", calibrated, "--category", CATEGORY, "--plot",
             tmp_path / "x.jpg").assert_refused("name a .png file")  # fmt: skip
    assert not (calibrated / "monitors" / f"{OTHER}.log").exists()
