"""The manifest as typed records (``inctrl_runtime.manifest``, ``Bundle``): what the export wrote
reads back as the model, files, source, export check, quantization and TensorRT builds, and a
build's record is written and dropped through the bundle layer."""

from __future__ import annotations

from pathlib import Path

import pytest

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.manifest import (
    ExportCheck,
    QuantizationRecord,
    VerificationWarning,
    drop_builds,
    read_manifest,
    record_build,
)

from helpers import TINY, edit_manifest, record_plan

pytestmark = pytest.mark.unit


def test_the_export_reads_back_as_records(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    manifest = read_manifest(tiny_bundle)
    assert bundle.model.preset == "tiny" and bundle.model.config == manifest["model"]["config"]
    assert bundle.model.config["vision"]["width"] == TINY.vision.width
    assert bundle.model.tapped_blocks == tuple(TINY.vision.tapped_blocks)
    assert bundle.model.letters() == {"S": 240, "E": 32, "L": 3, "P": 225, "D": 64}
    assert bundle.files == {name: r["sha256"] for name, r in manifest["files"].items()}
    assert bundle.files["encoder.onnx"] == file_sha256(tiny_bundle / "encoder.onnx")
    assert bundle.source.file == tiny_checkpoint.name and not bundle.source.demo
    assert bundle.source.sha256 == file_sha256(tiny_checkpoint)
    assert bundle.verification is not None and bundle.verification.passed
    assert 0 <= bundle.verification.max_abs_diff <= 1e-4
    assert {graph.quantization for graph in bundle.graphs.values()} == {None}  # fp32
    assert bundle.builds == {}


def test_quantization_and_check_records() -> None:
    record = {"format": "qdq", "activations": "int8-symmetric", "images": 3,
              "fp32_products": ["/a", "/b"], "image_digests": ["x", "y", "z"]}  # fmt: skip
    quantization = QuantizationRecord.from_manifest(record)
    assert quantization.fp32_products == ("/a", "/b") and quantization.images == 3
    split = {"split": "2 block products fp32"}  # no int8 count, no choices: what is known
    assert quantization.summary() == {
        **{k: v for k, v in record.items() if k != "image_digests"},
        **split,
    }
    record |= {"int8_products": 22, "fp32_choices": ["c_proj:0", "c_proj:1"]}
    assert QuantizationRecord.from_manifest(record).split == (
        "fp32: c_proj:0, c_proj:1 (2 of 24 block products)"
    )
    with pytest.raises(ValueError, match="fp32_choices holds something other than names"):
        QuantizationRecord.from_manifest({**record, "fp32_choices": [3]})
    assert QuantizationRecord.from_manifest(None) is None
    assert ExportCheck.from_manifest({}) is None and ExportCheck.from_manifest(None) is None
    failed = ExportCheck.from_manifest({"passed": False, "max_abs_diff": 0.5})
    assert failed == ExportCheck(False, 0.5)
    with pytest.warns(VerificationWarning, match="b/: this bundle failed its check"):
        failed.warn_if_failed("b/: this bundle")


def test_a_build_is_recorded_and_dropped_through_the_bundle_layer(bundle: Path) -> None:
    key = record_plan(bundle)
    (build,) = Bundle.open(bundle).builds.values()
    assert build.key == key and build.plans["encoder"].file.startswith("engines/")
    record_build(bundle, key, None)
    assert Bundle.open(bundle).builds == {}
    record_build(bundle, key, build.to_manifest())
    assert Bundle.open(bundle).builds == {key: build}
    drop_builds(bundle)
    assert "engines" not in read_manifest(bundle) and Bundle.open(bundle).builds == {}


def test_a_damaged_builds_record_refuses_only_what_reads_it(bundle: Path) -> None:
    edit_manifest(bundle, lambda m: m.update(engines={"fp16.trt11.4.sm89": {"plans": 3}}))
    opened = Bundle.open(bundle)  # onnxruntime needs no builds: the bundle opens
    with pytest.raises(BundleError, match="TensorRT engines record is incomplete"):
        opened.builds  # noqa: B018
    Detector.open(bundle).close()


def test_a_build_is_chosen_only_for_tensorrt(bundle: Path) -> None:
    key = record_plan(bundle)
    with pytest.raises(InputError, match="runs on --device tensorrt, not 'cpu'"):
        Detector.open(bundle, device="cpu", build=key)
