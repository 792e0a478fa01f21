"""Decisions on the command line: ``inctrl-run calibrate``, ``score --fpr`` (p-value, threshold,
decision), folders and ``--jsonl`` for large runs, ``info`` and ``unregister``.

Each test works on a private copy of the tiny bundle, registers candle through the Python API
and runs ``inctrl-run``'s ``main`` in process. The p-values, thresholds and decisions printed
are recomputed here from the calibration scores stored in the bank file.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import Outcome, random_images, run_main, snapshot
from PIL import Image

import inctrl_runtime.cli
from inctrl_runtime.cli import run_info, run_score
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines.plans import Build, ComputeCapability, PlanRecord, plan_file
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.results import HeatmapWriteError, print_streamed

CATEGORY = "candle"
NORMALS = 24  # thresholds at 0.05 (needs 19) and 0.1 (needs 9), none at 0.01 (needs 99)
# (n + 1)(1 - 0.25) = 18.75: no rounding question in the rank; 2 of the 6 queries lie above it.
FPR = 0.25


def pngs(folder: Path, count: int, seed: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(random_images(count, seed=seed)):
        paths.append(folder / f"{prefix}{i:02d}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, list[Path]]:
    """Prompt, calibration and query PNGs, each kind in its own folder."""
    root = tmp_path_factory.mktemp("decisions")
    return {
        "shots": pngs(root / "shots", 2, seed=1, prefix="shot"),
        "normals": pngs(root / "normals", NORMALS, seed=2, prefix="good"),
        "queries": pngs(root / "queries", 6, seed=3, prefix="query"),
    }


def inctrl_run(*args) -> Outcome:
    return run_main(inctrl_runtime.cli.main, *args)


def bank_file(bundle: Path, category: str = CATEGORY) -> Path:
    return bundle / "references" / f"{category}.npz"


def registered(bundle: Path, pictures: dict) -> Path:
    """The bundle with candle registered on the two shots (Python API)."""
    Detector.open(bundle).register(CATEGORY, pictures["shots"])
    return bundle


def calibrated(bundle: Path, pictures: dict, count: int = NORMALS) -> Path:
    """The bundle with candle registered and calibrated on ``count`` normals (Python API)."""
    detector = Detector.open(registered(bundle, pictures))
    detector.calibrate(CATEGORY, pictures["normals"][:count])
    return bundle


def scored(bundle: Path, *args) -> list[dict]:
    """``inctrl-run score --json`` of candle; it must succeed."""
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--json", *args)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def notes(outcome: Outcome) -> list[str]:
    return [line for line in outcome.err.splitlines() if line.startswith("note: ")]


def order_statistic(calibration: np.ndarray, alpha: float) -> float | None:
    rank = math.ceil((len(calibration) + 1) * (1 - alpha))
    return float(calibration[rank - 1]) if rank <= len(calibration) else None


def forge_calibration(bundle: Path, **changes) -> None:
    """Rewrite candle's bank file with its calibration changed (a valid digest)."""
    path = bank_file(bundle)
    bank = NumpyBank.load(path)
    replace(bank, calibration=replace(bank.calibration, **changes)).save(path)


# ---------------------------------------------------------------------------- calibrate
@pytest.mark.cli
def test_calibrate_then_score_gives_conformal_decisions(bundle: Path, pictures: dict) -> None:
    registered(bundle, pictures)
    normals = pictures["normals"][0].parent
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, "--normals", normals)
    assert outcome.code == 0, outcome.err
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    assert calibration.n == NORMALS and len(calibration.digests) == NORMALS
    assert (calibration.backend, calibration.precision) == ("onnxruntime-cpu", "fp32")
    expected = Detector.open(bundle).score(CATEGORY, pictures["normals"], fpr=0.1)
    np.testing.assert_array_equal(calibration.scores, np.sort([r.score for r in expected]))
    lines = outcome.err.splitlines()
    assert f"on n = {NORMALS} normal images" in lines[0] and str(bank_file(bundle)) in lines[0]
    assert lines[1:] == [
        "  false-positive rate 0.01: no threshold: needs at least 99 normal images",
        f"  false-positive rate 0.05: threshold {order_statistic(calibration.scores, 0.05):.4f}",
        f"  false-positive rate 0.1: threshold {order_statistic(calibration.scores, 0.1):.4f}",
    ]

    records = scored(bundle, "--fpr", FPR, *pictures["queries"])
    cut = order_statistic(calibration.scores, FPR)
    for record in records:
        at_least = int((calibration.scores.astype(np.float64) >= record["score"]).sum())
        assert record["p_value"] == (1 + at_least) / (NORMALS + 1)
        assert record["threshold"] == cut
        assert record["anomalous"] is (record["p_value"] <= FPR)
        assert record["anomalous"] is (record["score"] > cut)
    assert {r["anomalous"] for r in records} == {True, False}  # both decisions occur

    table = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", FPR, *pictures["queries"])
    assert table.code == 0, table.err
    assert "p-value" in table.out and "decision" in table.out
    assert f"threshold {cut:.4f}" in table.out
    assert table.out.count("ANOMALOUS") == 1 + sum(r["anomalous"] for r in records)  # + caption
    for record in records:
        assert f"{record['p_value']:.3g}" in table.out


@pytest.mark.cli
def test_calibration_dies_with_its_bank(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    assert scored(bundle, "--fpr", FPR, *pictures["queries"])[0]["p_value"] is not None
    shots = [a for shot in pictures["shots"] for a in ("--shot", shot)]
    assert inctrl_run("register", bundle, "--category", CATEGORY, *shots).code == 0
    assert NumpyBank.load(bank_file(bundle)).calibration is None
    for record in scored(bundle, "--fpr", FPR, *pictures["queries"]):
        assert record["p_value"] is record["threshold"] is record["anomalous"] is None


@pytest.mark.cli
def test_calibrating_on_a_prompt_is_refused(bundle: Path, pictures: dict, tmp_path: Path) -> None:
    """A prompt's pixels among the normals, saved in another format under another name."""
    calibrated(bundle, pictures)
    normals = tmp_path / "normals"
    shutil.copytree(pictures["normals"][0].parent, normals)
    Image.open(pictures["shots"][1]).save(normals / "renamed.bmp")
    before = snapshot(bundle)
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, "--normals", normals)
    outcome.assert_refused("renamed.bmp", "is one of the prompt images of 'candle'")
    assert snapshot(bundle) == before


@pytest.mark.cli
def test_a_failed_calibrate_keeps_the_bank_and_its_calibration(
    bundle: Path, pictures: dict, tmp_path: Path
) -> None:
    calibrated(bundle, pictures)
    decided = scored(bundle, "--fpr", FPR, *pictures["queries"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    before = snapshot(bundle)
    normals = [*pictures["normals"][: NORMALS // 2], broken, *pictures["normals"][NORMALS // 2 :]]
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, *normals)
    outcome.assert_refused("broken.png")
    assert snapshot(bundle) == before  # the bank file's bytes, and nothing left beside it
    assert scored(bundle, "--fpr", FPR, *pictures["queries"]) == decided


@pytest.mark.cli
def test_calibration_from_another_encoder_is_refused(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    forge_calibration(bundle, encoder_sha256="0" * 64)
    before = snapshot(bundle)
    score = inctrl_run("score", bundle, "--category", CATEGORY, *pictures["queries"])
    score.assert_refused("candle.npz", "calibration was scored by another encoder")
    calibrate = inctrl_run("calibrate", bundle, "--category", CATEGORY, *pictures["normals"])
    calibrate.assert_refused("candle.npz", "another encoder", "register the category again")
    assert snapshot(bundle) == before


@pytest.mark.cli
def test_another_backend_than_the_calibrations_is_noted(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    forge_calibration(bundle, backend="onnxruntime-cuda")
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", FPR, "--json",
                         *pictures["queries"])  # fmt: skip
    assert outcome.code == 0, outcome.err
    (note,) = notes(outcome)
    assert "onnxruntime-cuda fp32" in note and "onnxruntime-cpu fp32" in note
    assert outcome.err.splitlines() == [note]
    assert all(r["anomalous"] is not None for r in json.loads(outcome.out))  # still decided


@pytest.mark.cli
def test_too_few_normals_for_the_rate_give_p_values_only(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures, count=5)
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.05, "--json",
                         *pictures["queries"])  # fmt: skip
    assert outcome.code == 0, outcome.err
    (note,) = notes(outcome)
    assert outcome.err.splitlines() == [note]
    assert "needs at least 19 calibration images" in note and "has 5" in note
    for record in json.loads(outcome.out):
        at_least = int((calibration.scores.astype(np.float64) >= record["score"]).sum())
        assert record["p_value"] == (1 + at_least) / 6
        assert record["threshold"] is record["anomalous"] is None
    enough = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.2, "--json",
                        *pictures["queries"])  # fmt: skip
    assert enough.code == 0 and not notes(enough), enough.err  # 5 normals suffice for 0.2
    assert json.loads(enough.out)[0]["threshold"] == float(calibration.scores[-1])


@pytest.mark.cli
def test_shots_for_the_call_give_no_decisions(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    shot = ["--shot", pictures["shots"][0]]
    for record in scored(bundle, "--fpr", FPR, *shot, *pictures["queries"]):
        assert record["p_value"] is record["threshold"] is record["anomalous"] is None


# --------------------------------------------------------------------------- large runs
@pytest.mark.cli
def test_folders_are_their_images_sorted(bundle: Path, pictures: dict, tmp_path: Path) -> None:
    registered(bundle, pictures)
    folder = tmp_path / "mixed"
    folder.mkdir()
    for path in reversed(pictures["queries"][:3]):
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "nested").mkdir()
    records = scored(bundle, pictures["queries"][5], folder)
    expected = [pictures["queries"][5], *(folder / p.name for p in pictures["queries"][:3])]
    assert [r["image"] for r in records] == [str(p) for p in expected]
    by_file = scored(bundle, *pictures["queries"][:3])
    assert [r["score"] for r in records[1:]] == [r["score"] for r in by_file]
    empty = tmp_path / "empty"
    empty.mkdir()
    inctrl_run("score", bundle, "--category", CATEGORY, empty).assert_refused(
        "empty", "a folder without query images"
    )


@pytest.mark.cli
def test_jsonl_lines_are_the_json_list(bundle: Path, pictures: dict, tmp_path: Path) -> None:
    calibrated(bundle, pictures)
    queries = pictures["queries"][0].parent
    common = ["score", bundle, "--category", CATEGORY, "--fpr", FPR, "--batch-size", 4]
    listed = inctrl_run(*common, "--heatmaps", tmp_path / "a", "--json", queries)
    lines = inctrl_run(*common, "--heatmaps", tmp_path / "b", "--jsonl", queries)
    assert listed.code == lines.code == 0, (listed.err, lines.err)
    as_list, as_lines = (
        json.loads(listed.out),
        [json.loads(line) for line in lines.out.splitlines()],
    )
    assert len(as_lines) == len(pictures["queries"])
    names = [f"{i:04d}_query{i:02d}.png" for i in range(6)]  # numbered across the batches
    assert [Path(r.pop("heatmap")).name for r in as_list] == names
    assert [Path(r.pop("heatmap")) for r in as_lines] == [tmp_path / "b" / n for n in names]
    assert as_lines == as_list
    both = inctrl_run(*common, "--json", "--jsonl", queries)
    both.assert_refused("--json and --jsonl exclude each other")


@pytest.mark.cli
def test_records_come_batch_by_batch(bundle: Path, pictures: dict, monkeypatch) -> None:
    """Images are decoded as their batch is scored, and a batch's records are out before the
    next batch is decoded."""
    registered(bundle, pictures)
    opened: list[str] = []
    image_open = Image.open

    def counting_open(fp, *args, **kwargs):
        opened.append(Path(fp).name)
        return image_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    batches = run_score(bundle, CATEGORY, pictures["queries"], batch_size=4)
    first = next(batches)
    assert (
        [Path(r["image"]).name for r in first]
        == opened
        == [p.name for p in pictures["queries"][:4]]
    )
    assert [len(first), *map(len, batches)] == [4, 2] and len(opened) == 6


@pytest.mark.unit
def test_jsonl_lines_are_out_before_the_next_batch() -> None:
    """Each batch's lines are written before the next batch is asked for; a heatmap write that
    fails in a batch prints that batch's records too, then the error."""
    out = io.StringIO()
    seen: list[str] = []

    def batches():
        yield [{"image": "a"}, {"image": "b"}]
        seen.append(out.getvalue())
        raise HeatmapWriteError("no space left writing maps/0003_d.png", [{"image": "c"}])

    with contextlib.redirect_stdout(out), pytest.raises(HeatmapWriteError, match="no space"):
        print_streamed(batches(), "jsonl")
    assert seen == ['{"image": "a"}\n{"image": "b"}\n']
    assert out.getvalue().splitlines() == ['{"image": "a"}', '{"image": "b"}', '{"image": "c"}']


# --------------------------------------------------------------------- info, unregister
@pytest.mark.cli
def test_info_says_what_the_bundle_holds(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    metal_nut = Detector.open(bundle).register("metal_nut", pictures["shots"][:1])
    bank_file(bundle, "metal_nut").write_bytes(bank_file(bundle, "metal_nut").read_bytes()[:500])
    shutil.copy(bank_file(bundle), bank_file(bundle, "widget"))  # a bank without a prior
    before = snapshot(bundle)
    listed = inctrl_run("info", bundle, "--json")
    assert listed.code == 0, listed.err
    found = json.loads(listed.out)
    assert found == json.loads(json.dumps(run_info(bundle)))
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert found["model"] == {
        "preset": "tiny", "backbone": manifest["model"]["backbone"], "image_size": 240,
        "embed_dim": manifest["model"]["embed_dim"], "tapped_blocks": [2, 3, 4],
    }  # fmt: skip
    assert found["graphs"]["encoder"] == {"file": "encoder.onnx", "precision": "fp32"}
    assert found["graphs"]["head"]["precision"] == "fp32"
    check = manifest["verification"]
    assert found["export_check"] == {"passed": True, "max_abs_diff": check["max_abs_diff"]}
    assert (found["demo"], found["source_file"]) == (False, "tiny.safetensors")
    assert list(found["categories"]) == ["candle", "metal_nut", "widget"]

    candle = found["categories"]["candle"]
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    assert candle["prior"] is True and candle["bank"]["damaged"] is None
    assert candle["bank"]["shots"] == 2
    assert candle["bank"]["sources"] == [str(p) for p in pictures["shots"]]
    assert candle["bank"]["modified"].startswith(calibration.created[:10])
    assert candle["calibration"] == {
        "n": NORMALS, "backend": "onnxruntime-cpu", "precision": "fp32",
        "created": calibration.created,
        "thresholds": {
            "0.01": None,
            "0.05": order_statistic(calibration.scores, 0.05),
            "0.1": order_statistic(calibration.scores, 0.1),
        },
    }  # fmt: skip
    damaged = found["categories"]["metal_nut"]
    assert metal_nut.shots == 1 and damaged["bank"]["shots"] is None
    assert "not a readable reference bank" in damaged["bank"]["damaged"]
    assert damaged["calibration"] is None
    widget = found["categories"]["widget"]
    assert (
        widget["prior"] is False and "registered for category 'candle'" in widget["bank"]["damaged"]
    )

    table = inctrl_run("info", bundle)
    assert table.code == 0, table.err
    for text in (
        "tiny: open_clip ViT", "encoder.onnx (fp32)", "passed", "tiny.safetensors",
        "k = 2", f"n = {NORMALS}, onnxruntime-cpu fp32", "none: needs n >= 99",
        f"{order_statistic(calibration.scores, 0.05):.4f}", "DAMAGED", "metal_nut", "widget",
    ):  # fmt: skip
        assert text in table.out, text
    assert snapshot(bundle) == before  # info writes nothing


@pytest.mark.cli
def test_info_lists_the_tensorrt_builds(bundle: Path) -> None:
    """A build recorded in the manifest is listed with its plans; a plan missing from the
    folder is flagged (the bundle still opens: plans are checked when one is opened)."""
    plans = {
        graph: PlanRecord(graph, plan_file(graph, "fp32.trt11.4.sm89"), "0" * 64, 2**20, 30.0, {})
        for graph in ("encoder", "head")
    }
    build = Build(
        "fp32.trt11.4.sm89", "fp32", "11.4.0.106", ComputeCapability(8, 9), False, False,
        (1, 8, 32), (1, 2, 8), plans, gpu="NVIDIA L4",
        verification={"passed": False, "max_abs_diff": 3e-4},
    )  # fmt: skip
    (bundle / "engines").mkdir()
    (bundle / plans["encoder"].file).write_bytes(b"plan")
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {build.key: build.to_manifest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))

    found = run_info(bundle)["tensorrt"]
    assert list(found) == ["fp32.trt11.4.sm89"]
    record = found["fp32.trt11.4.sm89"]
    assert (record["tensorrt"], record["compute_capability"], record["gpu"]) == (
        "11.4.0.106",
        "8.9",
        "NVIDIA L4",
    )
    assert [p["present"] for p in record["plans"].values()] == [True, False]
    assert record["check"] == {"passed": False, "max_abs_diff": 3e-4}
    table = inctrl_run("info", bundle)
    assert table.code == 0, table.err
    words = " ".join(table.out.split())  # the table may wrap a long row
    for text in ("tensorrt fp32.trt11.4.sm89", "NVIDIA L4 (sm 8.9)", "2 plans 2.0 MB",
                 "built in 60 s", "check FAILED", "MISSING"):  # fmt: skip
        assert text in words, text


@pytest.mark.cli
def test_unregister_removes_the_bank_and_its_calibration(bundle: Path, pictures: dict) -> None:
    calibrated(bundle, pictures)
    removed = inctrl_run("unregister", bundle, "--category", CATEGORY)
    assert removed.code == 0, removed.err
    assert removed.err.splitlines() == [f"unregistered 'candle': removed {bank_file(bundle)}"]
    assert not bank_file(bundle).exists()
    assert run_info(bundle)["categories"]["candle"] == {
        "prior": True, "bank": None, "calibration": None
    }  # fmt: skip
    before = snapshot(bundle)
    again = inctrl_run("unregister", bundle, "--category", CATEGORY)
    again.assert_refused("'candle' is not registered", "nothing to remove")
    inctrl_run("score", bundle, "--category", CATEGORY, *pictures["queries"]).assert_refused(
        "not registered", "inctrl-run register"
    )
    assert snapshot(bundle) == before
