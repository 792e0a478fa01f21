"""Native TensorRT engines on a GPU: built by ``inctrl-export tensorrt``, run by the runtime.

Builds fp32, fp16 and int8 plans of the demo bundle (int8 from its symmetric Q/DQ encoder; fp32
and fp16, marked slow, of the full architecture too) and checks them against PyTorch and
onnxruntime at batch 1, 5, 32 and k = 1, 2, 8 (fp32 1e-4 on every output, fp16 5e-3 on the
scores, int8 its contract's mark on the final score), batch invariance (a batch above the
profile's max is split), a version-compatible plan on the lean runtime, the timing cache, and
``inctrl-run score --device tensorrt`` against ``--device cpu``.

Every test needs a CUDA GPU and NVIDIA's TensorRT builder; elsewhere each is skipped, saying
which is missing (``pytest -m gpu -rs tests/test_tensorrt_gpu.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl.loading import load_model
from inctrl_export.bundle import export_bundle
from inctrl_export.parity import DEFAULT_ATOL, JUDGED, pass_mark
from inctrl_export.tensorrt import TensorrtBuild, build_engines
from inctrl_export.tensorrt_checks import TRT_QUANTIZATION
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines.tensorrt.cuda import compute_capability, gpu_problem
from inctrl_runtime.engines.tensorrt.plans import plan_file
from inctrl_runtime.files import file_sha256
from inctrl_runtime.results import SCALAR_FIELDS, SCORE_FIELDS

from helpers import FULL, VARIED_SIZES, random_images, run_command


def _builder_problem() -> str | None:
    try:
        import inctrl_export.tensorrt_build  # noqa: F401
    except ImportError as err:
        return str(err)
    return None


GPU_PROBLEM = gpu_problem(0)
BUILDER_PROBLEM = _builder_problem()
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(GPU_PROBLEM is not None, reason=f"needs a CUDA GPU ({GPU_PROBLEM})"),
    pytest.mark.skipif(
        BUILDER_PROBLEM is not None,
        reason=f"needs the TensorRT builder (pip install inctrl[tensorrt]; {BUILDER_PROBLEM})",
    ),
]
# Scores differ by batch only in the engines' summation order (int8's activation scales are
# static, calibrated at export); mixing up images costs ~0.1.
BATCH_INVARIANCE = {"fp32": 1e-5, "fp16": 1e-3, "int8": 1e-5}
# A version-compatible plan without the lean runtime is about as large as a plain one (the lean
# runtime library would add some 100 MB).
LEAN_RUNTIME_MARGIN = 32 * 2**20


def _contract(precision: str) -> tuple[float, tuple[str, ...]]:
    """The contract's mark against PyTorch fp32 and the outputs it judges: fp32 every output,
    fp16 the scores (not the patch map's entries), int8 none (it is judged by its AUROC change
    on labelled images; its drift is reported)."""
    if precision in JUDGED:
        return pass_mark(None, precision), JUDGED[precision]
    return pass_mark(None, precision), {"fp32": SCORE_FIELDS, "fp16": SCALAR_FIELDS}[precision]


def assert_close(ours, reference, atol: float, fields: tuple[str, ...]) -> None:
    for name in fields:
        got, want = np.asarray(getattr(ours, name)), getattr(reference, name)
        want = want.cpu().numpy() if hasattr(want, "cpu") else np.asarray(want)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def demo_model():
    return load_model(None)


@pytest.fixture(scope="module", params=["fp32", "fp16", "int8"])
def demo_build(request, tmp_path_factory) -> TensorrtBuild:
    """The demo bundle in a precision (int8: static Q/DQ calibrated on the demo's own normal
    images), with engines built (and checked) for this GPU."""
    out = tmp_path_factory.mktemp("tensorrt") / f"demo-{request.param}"
    export_bundle(out, precision=request.param)
    return build_engines(out)


@pytest.fixture(scope="module")
def detectors(demo_build: TensorrtBuild):
    """The demo bundle opened on native TensorRT engines and on onnxruntime (CPU)."""
    opened = {device: Detector.open(demo_build.bundle, device) for device in ("tensorrt", "cpu")}
    yield opened
    for detector in opened.values():
        detector.close()


def test_the_build_is_recorded_and_passed_its_check(demo_build: TensorrtBuild) -> None:
    build, bundle = demo_build.build, demo_build.bundle
    assert demo_build.report.passed, demo_build.report.to_dict()
    assert demo_build.report.backend == "tensorrt"
    assert demo_build.report.shots == 3 and demo_build.report.queries == 9  # off the opt (2, 8)
    assert demo_build.report.atol == pass_mark(None, build.precision)
    assert build.compute_capability == compute_capability(0)
    assert build.key.startswith(f"{build.precision}.trt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["engines"][build.key]
    assert record["verification"]["passed"] and record["precision"] == build.precision
    if build.precision == "int8":  # what the plan was built from: symmetric Q/DQ
        quantization = manifest["graphs"]["encoder"]["quantization"]
        assert TRT_QUANTIZATION.items() <= quantization.items()
    for graph, plan in build.plans.items():
        assert plan.file == plan_file(graph, build.key)
        assert file_sha256(bundle / plan.file) == record["plans"][graph]["sha256"] == plan.sha256
        assert plan.build_seconds > 0 and plan.profiles
    assert demo_build.timing_cache.stat().st_size > 0
    assert demo_build.timing_cache == bundle.parent / f"{bundle.name}.timing-cache"


@pytest.mark.parity
@pytest.mark.parametrize("batch", [1, 5, 32])
@pytest.mark.parametrize("shots", [1, 2, 8])
def test_engines_match_pytorch_and_onnxruntime(
    demo_build: TensorrtBuild, detectors: dict, demo_model, batch: int, shots: int
) -> None:
    atol, fields = _contract(demo_build.build.precision)
    engines, onnx = detectors["tensorrt"], detectors["cpu"]
    assert engines.encoder_engine.backend == "tensorrt" and engines.encoder_engine.on_gpu
    category = engines.categories[0]
    prompts = random_images(shots, seed=100 + shots, size=VARIED_SIZES)
    queries = random_images(batch, seed=200 + batch, size=VARIED_SIZES)
    ours = engines.score_arrays(category, queries, bank=engines.reference(prompts), batch_size=32)
    reference = demo_model.score(
        queries, demo_model.reference(prompts), demo_model.text_prior(category)
    )
    assert_close(ours, reference, atol, fields)
    by_onnx = onnx.score_arrays(category, queries, bank=onnx.reference(prompts), batch_size=32)
    assert_close(ours, by_onnx, atol, fields)


@pytest.mark.parity
def test_scores_do_not_depend_on_the_batch(demo_build: TensorrtBuild, detectors: dict) -> None:
    engines = detectors["tensorrt"]
    category = engines.categories[0]
    bank = engines.reference(random_images(2, seed=300))
    pixels = engines.pixels(random_images(40, seed=301, size=VARIED_SIZES))
    split = engines.score_arrays(category, pixels, bank=bank, batch_size=40)  # above max 32
    tolerance = BATCH_INVARIANCE[demo_build.build.precision]
    for batch_size in (1, 5, 32):
        other = engines.score_arrays(category, pixels, bank=bank, batch_size=batch_size)
        assert_close(other, split, tolerance, SCORE_FIELDS)


def test_a_version_compatible_plan_runs_on_the_lean_runtime(
    demo_build: TensorrtBuild, tmp_path: Path
) -> None:
    from inctrl_export.tensorrt_build import VERSION
    from inctrl_runtime.engines.trt import tensorrt_runtimes

    if tensorrt_runtimes().get("tensorrt-lean") != VERSION:
        pytest.skip(
            f"needs the lean TensorRT runtime {VERSION} (pip install inctrl[tensorrt-lean])"
        )
    out = tmp_path / "vc"
    export_bundle(out, precision=demo_build.build.precision, verify=False)
    result = build_engines(out, version_compatible=True)
    assert result.report.passed and result.report.backend == "tensorrt-lean"
    assert result.build.key.endswith(".vc") and not result.build.lean_runtime_embedded
    detector = Detector.open(out, "tensorrt")
    try:
        assert detector.encoder_engine.backend == "tensorrt-lean"
    finally:
        detector.close()
    for graph, plan in result.build.plans.items():
        assert plan.bytes < demo_build.build.plans[graph].bytes + LEAN_RUNTIME_MARGIN, graph


def test_the_timing_cache_makes_a_second_build_faster(tmp_path: Path) -> None:
    out, cache = tmp_path / "demo", tmp_path / "builds.timing-cache"
    export_bundle(out, verify=False)
    first = build_engines(out, timing_cache=cache, verify=False)
    written = cache.read_bytes()
    second = build_engines(out, timing_cache=cache, verify=False, force=True)
    assert written and sum(second.seconds.values()) < sum(first.seconds.values())
    cache.write_bytes(b"not a timing cache")
    notes: list[str] = []
    build_engines(out, timing_cache=cache, verify=False, force=True, log=notes.append)
    assert any("does not fit this GPU and TensorRT" in note for note in notes), notes
    assert cache.read_bytes() != b"not a timing cache"  # replaced by the new build's


def test_the_cli_builds_reports_and_keeps_plans_without_force(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    export_bundle(out, precision="fp16", verify=False)
    done = run_command("inctrl_export.cli", "tensorrt", str(out), "--json", "-", timeout=1800)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and report["backend"] == "tensorrt"
    assert "building engines/encoder.fp16.trt" in done.stderr and " s" in done.stderr
    again = run_command("inctrl_export.cli", "tensorrt", str(out))
    assert again.returncode == 2 and "--force" in again.stderr
    assert again.stderr.count("\n") == 1


def test_inctrl_run_score_on_tensorrt_equals_cpu(demo_build: TensorrtBuild, tmp_path: Path):
    bundle = Path(shutil.copytree(demo_build.bundle, tmp_path / "bundle"))
    files = []
    for i, array in enumerate(random_images(5, seed=400, size=VARIED_SIZES)):
        files.append(tmp_path / f"image_{i}.png")
        Image.fromarray(array).save(files[-1])
    category = Bundle.open(bundle).categories[0]
    shots = [arg for file in files[:2] for arg in ("--shot", str(file))]
    registered = run_command("inctrl_runtime.cli", "register", str(bundle), "--category",
                             category, *shots)  # fmt: skip
    assert registered.returncode == 0, registered.stderr
    scored = {}
    for device in ("tensorrt", "cpu"):
        done = run_command("inctrl_runtime.cli", "score", str(bundle), "--category", category,
                           "--device", device, "--json", *map(str, files[2:]))  # fmt: skip
        assert done.returncode == 0, done.stderr
        scored[device] = json.loads(done.stdout)
    assert len(scored["tensorrt"]) == len(scored["cpu"]) == 3
    # Within fp16's mark, or the precision's own where larger (int8: its mark on the final score).
    mark, judged = _contract(demo_build.build.precision)
    atol = max(mark, DEFAULT_ATOL["fp16"])
    for ours, cpu in zip(scored["tensorrt"], scored["cpu"], strict=True):
        assert ours["image"] == cpu["image"]
        for name in (name for name in SCALAR_FIELDS if name in judged):
            assert abs(ours[name] - cpu[name]) <= atol, name


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory) -> Path:
    from inctrl_bench.torch_side import save_preset_checkpoint

    path = tmp_path_factory.mktemp("full") / "full.safetensors"
    return save_preset_checkpoint(FULL, path, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_full_architecture_engines_pass_their_check(
    full_checkpoint: Path, tmp_path: Path, precision: str
) -> None:
    out = tmp_path / f"full-{precision}"
    export_bundle(out, full_checkpoint, ["candle"], precision=precision, verify=False)
    result = build_engines(out, full_checkpoint)
    assert result.report.passed, result.report.to_dict()
    assert result.build.plans["encoder"].bytes > 100e6  # the full ViT-B-16-plus-240 tower
    engines = Detector.open(out, "tensorrt")
    try:
        assert engines.encoder_engine.batch_range == (1, 32)
    finally:
        engines.close()
