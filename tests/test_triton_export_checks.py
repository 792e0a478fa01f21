"""What ``inctrl-export triton`` refuses, each in one line before anything is written (a
damaged bundle or plan, no plans, a profile under --max-batch, builds to choose from, bad
options, an --out that exists or holds the bundle), and its command line (what it says, --help).

The plans here are manifest records with made-up bytes (``helpers.record_plan``): the export
only checks a plan's size and sha256 against its record and copies it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inctrl_export.cli import main
from inctrl_export.triton import export_triton
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.triton.names import ENCODER, ENTRY, VERSION

from helpers import (
    PLAN_BYTES,
    PLAN_TENSORRT,
    read_triton_configs,
    record_plan,
    run_main,
    snapshot,
)

BACKENDS = ("onnxruntime", "tensorrt", "python")


@pytest.fixture
def plans_bundle(bundle: Path) -> Path:
    """The tiny bundle with an encoder plan recorded (made-up bytes, see ``record_plan``)."""
    record_plan(bundle)
    return bundle


@pytest.mark.unit
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flipped_byte_is_refused_before_anything_is_written(
    plans_bundle: Path, tmp_path: Path, backend: str
) -> None:
    graph = plans_bundle / "head.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match="head.onnx: sha256 differs from the manifest"):
        export_triton(plans_bundle, tmp_path / "repo", backend)
    assert snapshot(tmp_path) == before


@pytest.mark.unit
def test_a_plan_that_is_not_its_record_is_refused(plans_bundle: Path, tmp_path: Path) -> None:
    (plan,) = (plans_bundle / "engines").iterdir()
    plan.write_bytes(PLAN_BYTES[::-1])  # same size, other bytes
    with pytest.raises(BundleError, match="size or sha256 differ from the manifest"):
        export_triton(plans_bundle, tmp_path / "repo", "tensorrt")
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
def test_no_plans_say_to_run_inctrl_export_tensorrt(bundle: Path, tmp_path: Path) -> None:
    outcome = run_main(main, "triton", bundle, "--out", tmp_path / "repo", "--backend", "tensorrt")
    outcome.assert_refused("has no TensorRT engines", f"inctrl-export tensorrt {bundle}")
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
def test_a_profile_under_max_batch_names_the_batch_to_rebuild_with(
    bundle: Path, tmp_path: Path
) -> None:
    record_plan(bundle, batch=(1, 4, 16))
    outcome = run_main(
        main, "triton", bundle, "--out", tmp_path / "repo", "--backend", "tensorrt",
        "--max-batch", "32",
    )  # fmt: skip
    outcome.assert_refused("batches up to 16", "--batch 1,4,32 --force", "--max-batch 16")
    assert not (tmp_path / "repo").exists()
    export_triton(bundle, tmp_path / "repo", "tensorrt", max_batch=16)
    assert read_triton_configs(tmp_path / "repo")[ENCODER].max_batch_size == 16


@pytest.mark.unit
def test_builds_are_chosen_by_precision_or_by_key(bundle: Path, tmp_path: Path) -> None:
    l4 = record_plan(bundle, sm=(8, 9))
    h100 = record_plan(bundle, sm=(9, 0))
    with pytest.raises(InputError, match="several TensorRT builds .*--engine KEY") as err:
        export_triton(bundle, tmp_path / "repo", "tensorrt")
    assert l4 in str(err.value) and h100 in str(err.value)
    result = export_triton(bundle, tmp_path / "repo", "tensorrt", engine=h100)
    assert result.build is not None and result.build.key == h100
    with pytest.raises(BundleError, match="has no TensorRT build 'fp32.trt11.4.sm75'"):
        export_triton(bundle, tmp_path / "other", "tensorrt", engine="fp32.trt11.4.sm75")


@pytest.mark.unit
def test_a_build_of_another_precision_is_not_served(bundle: Path, tmp_path: Path) -> None:
    record_plan(bundle, precision="fp16")
    with pytest.raises(BundleError, match="no TensorRT build holds a plan of the bundle's fp32"):
        export_triton(bundle, tmp_path / "repo", "tensorrt")


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (("--category", "nosuch"), ("nosuch", "has no text prior")),
        (
            ("--category", "metal_nut"),
            ("metal_nut", "not registered", "inctrl-run register"),
        ),
        (("--backend", "openvino"), ("unknown --backend 'openvino'",)),
        (("--engine", "fp32.trt11.4.sm89"), ("--engine", "--backend tensorrt")),
        (("--max-batch", "0"), ("--max-batch",)),
        (("--instances", "0"), ("--instances",)),
        (("--fpr", "1.5"), ("--fpr",)),
        (("--region-fpr", "0"), ("--region-fpr must be a rate",)),
    ],
)
def test_bad_options_are_one_line(
    exportable_bundle: Path, tmp_path: Path, args: tuple[str, ...], phrases: tuple[str, ...]
) -> None:
    outcome = run_main(main, "triton", exportable_bundle, "--out", tmp_path / "repo", *args)
    outcome.assert_refused(*phrases)
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
@pytest.mark.parametrize("where", [".", ".."])
def test_force_never_replaces_the_bundle_itself(bundle: Path, where: str) -> None:
    before = snapshot(bundle.parent)
    outcome = run_main(main, "triton", bundle, "--out", bundle / where, "--force")
    outcome.assert_refused("holds the bundle", "would delete")
    assert snapshot(bundle.parent) == before


@pytest.mark.cli
def test_the_command_writes_and_replaces_only_with_force(exportable_bundle: Path, tmp_path: Path):
    out = tmp_path / "repo"
    first = run_main(main, "triton", exportable_bundle, "--out", out, "--category", "candle",
                     "--region-fpr", "0.5")  # fmt: skip
    assert first.code == 0, first.err
    assert f"wrote {out}: the onnxruntime encoder, on the CPU" in first.err
    entry = read_triton_configs(out)[ENTRY]
    assert entry.parameters["categories"].string_value == "candle"
    assert entry.parameters["fpr"].string_value == "0.01"
    assert entry.parameters["region_fpr"].string_value == "0.5"
    again = run_main(main, "triton", exportable_bundle, "--out", out, "--backend", "python")
    again.assert_refused(str(out), "--force")
    assert read_triton_configs(out)[ENCODER].platform == "onnxruntime_onnx"
    forced = run_main(
        main, "triton", exportable_bundle, "--out", out, "--backend", "python", "--force"
    )
    assert forced.code == 0, forced.err
    assert read_triton_configs(out)[ENCODER].backend == "python"
    assert not (out / ENCODER / VERSION / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left


@pytest.mark.cli
@pytest.mark.parametrize("version_compatible", [False, True])
def test_the_tensorrt_export_says_what_server_the_plan_needs(
    bundle: Path, tmp_path: Path, version_compatible: bool
) -> None:
    key = record_plan(bundle, version_compatible=version_compatible)
    out = tmp_path / "repo"
    outcome = run_main(main, "triton", bundle, "--out", out, "--backend", "tensorrt")
    assert outcome.code == 0, outcome.err
    for phrase in ("on the GPU", key, f"TensorRT is {PLAN_TENSORRT}", "compute capability 8.9",
                   f"tritonserver --model-repository {out}"):  # fmt: skip
        assert phrase in outcome.err, phrase
    assert ("version-compatible=true" in outcome.err) == version_compatible


@pytest.mark.cli
def test_help_explains_every_option_and_the_gpu_deployment() -> None:
    outcome = run_main(main, "triton", "--help")
    assert outcome.code == 0
    text = " ".join(outcome.out.split())
    for option in ("--out", "--backend", "--max-batch", "--instances", "--category", "--fpr",
                   "--region-fpr", "--engine", "--force"):  # fmt: skip
        assert option in text, option
    for phrase in ("onnxruntime_onnx", "tensorrt_plan", "KIND_AUTO", "KIND_GPU",
                   "docker run --gpus all", "nvcr.io/nvidia/tritonserver:<yy.mm>-py3",
                   "--model-repository /models",
                   "pip install \"inctrl[cpu]\"", "numpy<2"):  # fmt: skip
        assert phrase in text, phrase
