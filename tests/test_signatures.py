"""Graph signatures are checked, not trusted: the manifest against what the runtime feeds and
reads, and each engine against the manifest (names, ranks, dtypes, fixed dimensions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.cli import main as run_main
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines import TensorSpec, signature_difference
from inctrl_runtime.errors import BundleError
from inctrl_runtime.manifest import MANIFEST

from helpers import edit_manifest, forge


def refused_in_one_line(bundle: Path, capsys, *words: str) -> str:
    """``inctrl-run score`` on the bundle: exit 2, one ``error:`` line holding ``words``."""
    image = bundle.parent / "image.png"
    Image.fromarray(np.full((250, 260, 3), 90, dtype=np.uint8)).save(image)
    with pytest.raises(SystemExit) as stop:
        run_main(["score", str(bundle), "--category", "candle", "--shot", str(image), str(image)])
    assert stop.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "Traceback" not in lines[0]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def head_output(manifest: dict, name: str) -> dict:
    return next(e for e in manifest["graphs"]["head"]["outputs"] if e["name"] == name)


@pytest.mark.cli
def test_renamed_output_in_the_manifest_is_refused(bundle: Path, capsys) -> None:
    edit_manifest(bundle, lambda m: head_output(m, "score").update(name="final"))
    with pytest.raises(BundleError, match="head graph's outputs"):
        Bundle.open(bundle)
    refused_in_one_line(bundle, capsys, MANIFEST, "score", "final")


@pytest.mark.cli
def test_head_swapped_for_the_encoder_with_a_forged_sha256_is_refused(bundle: Path, capsys) -> None:
    forge(bundle, "head.onnx", lambda path: shutil.copyfile(bundle / "encoder.onnx", path))
    with pytest.raises(BundleError, match="head.onnx: its inputs differ"):
        Detector.open(bundle)
    refused_in_one_line(bundle, capsys, "head.onnx", "ref_patches")


@pytest.mark.cli
def test_changed_dtype_is_refused(bundle: Path, capsys) -> None:
    edit_manifest(bundle, lambda m: head_output(m, "text_score").update(dtype="float16"))
    refused_in_one_line(bundle, capsys, MANIFEST, "text_score is float16, expected float32")


@pytest.mark.cli
def test_changed_fixed_dimension_is_refused(bundle: Path, capsys) -> None:
    def change(manifest: dict) -> None:
        manifest["graphs"]["encoder"]["inputs"][0]["shape"][2] = 224

    edit_manifest(bundle, change)  # against the model record: the image size is 240
    refused_in_one_line(bundle, capsys, MANIFEST, "image has 224 on axis 2, expected 240")


@pytest.mark.cli
def test_manifest_consistent_with_itself_but_not_with_the_graph_is_refused(
    bundle: Path, capsys
) -> None:
    def narrow(manifest: dict) -> None:  # the model record and every signature say width 32
        manifest["model"]["width"] = 32
        for graph in manifest["graphs"].values():
            for entry in graph["inputs"] + graph["outputs"]:
                if entry["name"] in ("patches", "ref_patches"):
                    entry["shape"][-1] = 32

    edit_manifest(bundle, narrow)
    refused_in_one_line(bundle, capsys, "encoder.onnx", "patches has 64 on axis 3, expected 32")


@pytest.mark.cli
def test_a_graph_renamed_with_its_manifest_is_still_not_what_the_runtime_reads(
    bundle: Path, capsys, tmp_path: Path
) -> None:
    """Graph and manifest agree, but the runtime reads ``score``: refused before any run."""
    graph = onnx.load(str(bundle / "head.onnx"))
    for node in graph.graph.node:
        node.output[:] = ["final" if out == "score" else out for out in node.output]
    next(o for o in graph.graph.output if o.name == "score").name = "final"
    onnx.save(graph, str(tmp_path / "renamed.onnx"))
    forge(bundle, "head.onnx", lambda path: shutil.copyfile(tmp_path / "renamed.onnx", path))
    edit_manifest(bundle, lambda m: head_output(m, "score").update(name="final"))
    refused_in_one_line(bundle, capsys, "not what this runtime reads", "score")


@pytest.mark.unit
def test_signature_difference_in_words() -> None:
    spec = (TensorSpec("x", ("batch", 3), "float32"),)
    assert signature_difference(spec, spec) == ""
    assert signature_difference((TensorSpec("x", (7, 3), "float32"),), spec) == ""  # dynamic
    assert "rank 1" in signature_difference((TensorSpec("x", (3,), "float32"),), spec)
    assert "axis 1" in signature_difference((TensorSpec("x", (1, 4), "float32"),), spec)
    assert "float16" in signature_difference((TensorSpec("x", (1, 3), "float16"),), spec)
    assert "missing: x" in signature_difference((TensorSpec("y", (1, 3), "float32"),), spec)


@pytest.mark.parity
def test_export_self_check_holds_the_graphs_to_graph_specs(tiny_bundle: Path, tiny_model) -> None:
    from inctrl import get_config
    from inctrl_export.bundle import _check_signatures

    detector = Detector.open(tiny_bundle)
    _check_signatures(detector, tiny_model.config)  # the exporter's own specs: passes
    with pytest.raises(RuntimeError, match="encoder.onnx has other outputs"):
        _check_signatures(detector, get_config("demo"))  # other widths
