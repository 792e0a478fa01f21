"""``inctrl-run info`` (what a bundle holds: its model and graphs, each category's prior, bank
and calibration, its TensorRT builds) and ``unregister``, run in process on a private copy of
the tiny bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from inctrl_runtime.cli.info import run_info
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines.tensorrt.cuda import ComputeCapability
from inctrl_runtime.engines.tensorrt.plans import Build, PlanRecord, plan_file
from inctrl_runtime.references import NumpyBank

from helpers import CATEGORY, NORMALS, bank_file, calibrated, inctrl_run, order_statistic, snapshot


# --------------------------------------------------------------------- info, unregister
@pytest.mark.cli
def test_info_says_what_the_bundle_holds(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    metal_nut = Detector.open(bundle).register("metal_nut", inputs["shots"][:1])
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
    assert candle["bank"]["sources"] == [str(p) for p in inputs["shots"]]
    assert candle["bank"]["modified"].startswith(calibration.created[:10])
    assert candle["calibration"] == {
        "n": NORMALS, "backend": "onnxruntime-cpu", "precision": "fp32",
        "created": calibration.created,
        "thresholds": {
            "0.01": None,
            "0.05": order_statistic(calibration.scores, 0.05),
            "0.1": order_statistic(calibration.scores, 0.1),
        },
        "region_thresholds": {
            "0.01": None,
            "0.05": order_statistic(calibration.map_maxima, 0.05),
            "0.1": order_statistic(calibration.map_maxima, 0.1),
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
def test_unregister_removes_the_bank_and_its_calibration(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
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
    inctrl_run("score", bundle, "--category", CATEGORY, *inputs["queries"]).assert_refused(
        "not registered", "inctrl-run register"
    )
    assert snapshot(bundle) == before
