"""Decisions on the command line: ``inctrl-run calibrate``, ``score --fpr`` (p-value, threshold,
decision), folders and ``--jsonl`` for large runs.

Each test works on a private copy of the tiny bundle, registers candle through the Python API
and runs ``inctrl-run``'s ``main`` in process. The p-values, thresholds and decisions printed
are recomputed here from the calibration scores stored in the bank file.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.cli.score import run_score
from inctrl_runtime.decisions import TIE_TOLERANCE
from inctrl_runtime.detector import Detector
from inctrl_runtime.output import PictureWriteError, print_streamed
from inctrl_runtime.references import NumpyBank

from helpers import (
    CATEGORY,
    NORMALS,
    Outcome,
    bank_file,
    calibrated,
    inctrl_run,
    order_statistic,
    registered,
    snapshot,
)

# (n + 1)(1 - 0.25) = 18.75: no rounding question in the rank; 2 of the 6 queries lie above it.
FPR = 0.25


def scored(bundle: Path, *args) -> list[dict]:
    """``inctrl-run score --json`` of candle; it must succeed."""
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--json", *args)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def notes(outcome: Outcome) -> list[str]:
    return [line for line in outcome.err.splitlines() if line.startswith("note: ")]


def forge_calibration(bundle: Path, **changes) -> None:
    """Rewrite candle's bank file with its calibration changed (a valid digest)."""
    path = bank_file(bundle)
    bank = NumpyBank.load(path)
    replace(bank, calibration=replace(bank.calibration, **changes)).save(path)


# ---------------------------------------------------------------------------- calibrate
@pytest.mark.cli
def test_calibrate_then_score_gives_conformal_decisions(bundle: Path, inputs: dict) -> None:
    registered(bundle, inputs)
    normals = inputs["normals"][0].parent
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, "--normals", normals)
    assert outcome.code == 0, outcome.err
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    assert calibration.n == NORMALS and len(calibration.digests) == NORMALS
    assert (calibration.backend, calibration.precision) == ("onnxruntime-cpu", "fp32")
    expected = Detector.open(bundle).results(CATEGORY, inputs["normals"], fpr=0.1)
    np.testing.assert_array_equal(calibration.scores, np.sort([r.score for r in expected]))
    lines = outcome.err.splitlines()
    assert f"on n = {NORMALS} normal images" in lines[0] and str(bank_file(bundle)) in lines[0]
    assert lines[1:] == [
        "  false-positive rate 0.01: no threshold: needs at least 99 normal images",
        *(
            f"  false-positive rate {rate}: threshold "
            f"{order_statistic(calibration.scores, rate):.4f}, region threshold "
            f"{order_statistic(calibration.map_maxima, rate):.4f}"
            for rate in (0.05, 0.1)
        ),
    ]

    records = scored(bundle, "--fpr", FPR, *inputs["queries"])
    cut = order_statistic(calibration.scores, FPR)
    for record in records:
        at_least = int((calibration.scores.astype(np.float64) >= record["score"]).sum())
        assert record["p_value"] == (1 + at_least) / (NORMALS + 1)
        assert record["threshold"] == cut
        assert record["anomalous"] is (record["p_value"] <= FPR)
        assert record["anomalous"] is (record["score"] > cut)
    assert {r["anomalous"] for r in records} == {True, False}  # both decisions occur

    table = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", FPR, *inputs["queries"])
    assert table.code == 0, table.err
    assert "p-value" in table.out and "decision" in table.out
    assert f"threshold {cut:.4f}" in table.out
    assert table.out.count("ANOMALOUS") == 1 + sum(r["anomalous"] for r in records)  # + caption
    for record in records:
        assert f"{record['p_value']:.3g}" in table.out


@pytest.mark.cli
def test_calibration_dies_with_its_bank(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    assert scored(bundle, "--fpr", FPR, *inputs["queries"])[0]["p_value"] is not None
    shots = [a for shot in inputs["shots"] for a in ("--shot", shot)]
    assert inctrl_run("register", bundle, "--category", CATEGORY, *shots).code == 0
    assert NumpyBank.load(bank_file(bundle)).calibration is None
    for record in scored(bundle, "--fpr", FPR, *inputs["queries"]):
        assert record["p_value"] is record["threshold"] is record["anomalous"] is None


@pytest.mark.cli
def test_calibrating_on_a_prompt_is_refused(bundle: Path, inputs: dict, tmp_path: Path) -> None:
    """A prompt's pixels among the normals, saved in another format under another name."""
    calibrated(bundle, inputs)
    normals = tmp_path / "normals"
    shutil.copytree(inputs["normals"][0].parent, normals)
    Image.open(inputs["shots"][1]).save(normals / "renamed.bmp")
    before = snapshot(bundle)
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, "--normals", normals)
    outcome.assert_refused("renamed.bmp", "is one of the prompt images of 'candle'")
    assert snapshot(bundle) == before


@pytest.mark.cli
def test_a_failed_calibrate_keeps_the_bank_and_its_calibration(
    bundle: Path, inputs: dict, tmp_path: Path
) -> None:
    calibrated(bundle, inputs)
    decided = scored(bundle, "--fpr", FPR, *inputs["queries"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = snapshot(bundle)
    normals = [*inputs["normals"][: NORMALS // 2], broken, *inputs["normals"][NORMALS // 2 :]]
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, *normals)
    outcome.assert_refused("broken.png")
    assert snapshot(bundle) == before  # the bank file's bytes, and nothing left beside it
    assert scored(bundle, "--fpr", FPR, *inputs["queries"]) == decided


@pytest.mark.cli
def test_calibration_from_another_encoder_is_refused(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    forge_calibration(bundle, encoder_sha256="0" * 64)
    before = snapshot(bundle)
    score = inctrl_run("score", bundle, "--category", CATEGORY, *inputs["queries"])
    score.assert_refused("candle.npz", "calibration was scored by another encoder")
    calibrate = inctrl_run("calibrate", bundle, "--category", CATEGORY, *inputs["normals"])
    calibrate.assert_refused("candle.npz", "another encoder", "register the category again")
    assert snapshot(bundle) == before


@pytest.mark.cli
def test_another_backend_than_the_calibrations_is_noted(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    forge_calibration(bundle, backend="onnxruntime-cuda")
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", FPR, "--json",
                         *inputs["queries"])  # fmt: skip
    assert outcome.code == 0, outcome.err
    (note,) = notes(outcome)
    assert "onnxruntime-cuda fp32" in note and "onnxruntime-cpu fp32" in note
    assert outcome.err.splitlines() == [note]
    assert all(r["anomalous"] is not None for r in json.loads(outcome.out))  # still decided


@pytest.mark.cli
def test_too_few_normals_for_the_rate_give_p_values_only(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs, count=5)
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.05, "--json",
                         *inputs["queries"])  # fmt: skip
    assert outcome.code == 0, outcome.err
    (note,) = notes(outcome)
    assert outcome.err.splitlines() == [note]
    assert "needs at least 19 calibration images" in note and "has 5" in note
    for record in json.loads(outcome.out):
        lowered = record["score"] - TIE_TOLERANCE  # within it below the score: as large
        at_least = int((calibration.scores.astype(np.float64) >= lowered).sum())
        assert record["p_value"] == (1 + at_least) / 6
        assert record["threshold"] is record["anomalous"] is None
    enough = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.2, "--json",
                        *inputs["queries"])  # fmt: skip
    assert enough.code == 0 and not notes(enough), enough.err  # 5 normals suffice for 0.2
    assert json.loads(enough.out)[0]["threshold"] == float(calibration.scores[-1]) + TIE_TOLERANCE


@pytest.mark.cli
def test_shots_for_the_call_give_no_decisions(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    shot = ["--shot", inputs["shots"][0]]
    for record in scored(bundle, "--fpr", FPR, *shot, *inputs["queries"]):
        assert record["p_value"] is record["threshold"] is record["anomalous"] is None


# --------------------------------------------------------------------------- large runs
@pytest.mark.cli
def test_folders_are_their_images_sorted(bundle: Path, inputs: dict, tmp_path: Path) -> None:
    registered(bundle, inputs)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in reversed(inputs["queries"][:3]):
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    records = scored(bundle, inputs["queries"][5], folder)
    expected = [inputs["queries"][5], *(folder / p.name for p in inputs["queries"][:3])]
    assert [r["image"] for r in records] == [str(p) for p in expected]
    by_file = scored(bundle, *inputs["queries"][:3])
    assert [r["score"] for r in records[1:]] == [r["score"] for r in by_file]
    empty = tmp_path / "empty"
    empty.mkdir()
    inctrl_run("score", bundle, "--category", CATEGORY, empty).assert_refused(
        "empty", "a folder without query images"
    )


@pytest.mark.cli
def test_jsonl_lines_are_the_json_list(bundle: Path, inputs: dict, tmp_path: Path) -> None:
    calibrated(bundle, inputs)
    queries = inputs["queries"][0].parent
    common = ["score", bundle, "--category", CATEGORY, "--fpr", FPR, "--batch-size", 4]
    listed = inctrl_run(*common, "--heatmaps", tmp_path / "a", "--json", queries)
    lines = inctrl_run(*common, "--heatmaps", tmp_path / "b", "--jsonl", queries)
    assert listed.code == lines.code == 0, (listed.err, lines.err)
    as_list, as_lines = (
        json.loads(listed.out),
        [json.loads(line) for line in lines.out.splitlines()],
    )
    assert len(as_lines) == len(inputs["queries"])
    names = [f"query{i:02d}.png" for i in range(6)]  # named after their images
    assert [Path(r.pop("heatmap")).name for r in as_list] == names
    assert [Path(r.pop("heatmap")) for r in as_lines] == [tmp_path / "b" / n for n in names]
    assert as_lines == as_list
    both = inctrl_run(*common, "--json", "--jsonl", queries)
    both.assert_refused("--json and --jsonl exclude each other")


@pytest.mark.cli
def test_records_come_batch_by_batch(bundle: Path, inputs: dict, image_reads) -> None:
    """Images are decoded as their batch is scored, and a batch's records are out before the
    next batch is decoded."""
    registered(bundle, inputs)
    image_reads.opened.clear()
    batches = run_score(bundle, CATEGORY, inputs["queries"], batch_size=4)
    first = next(batches)
    assert (
        [Path(r["image"]).name for r in first]
        == [Path(file).name for file in image_reads.opened]
        == [p.name for p in inputs["queries"][:4]]
    )
    assert [len(first), *map(len, batches)] == [4, 2] and len(image_reads.opened) == 6


@pytest.mark.unit
def test_jsonl_lines_are_out_before_the_next_batch() -> None:
    """Each batch's lines are written before the next batch is asked for; a heatmap write that
    fails in a batch prints that batch's records too, then the error."""
    out = io.StringIO()
    seen: list[str] = []

    def batches():
        yield [{"image": "a"}, {"image": "b"}]
        seen.append(out.getvalue())
        raise PictureWriteError("no space left writing maps/0003_d.png", 1, [{"image": "c"}])

    with contextlib.redirect_stdout(out), pytest.raises(PictureWriteError, match="no space"):
        print_streamed(batches(), "jsonl")
    assert seen == ['{"image": "a"}\n{"image": "b"}\n']
    assert out.getvalue().splitlines() == ['{"image": "a"}', '{"image": "b"}', '{"image": "c"}']
