"""Native TensorRT engines in the runtime, as far as a machine without a GPU can check them: plan
names, profiles and manifest records with their refusals, the plan checks before TensorRT reads
a byte, the feed checks of a plan's IO tensors, and the one-line refusals of ``--device
tensorrt`` here. The names the runner uses are checked in ``test_tensorrt_api.py``; running
plans is ``tests/test_tensorrt_gpu.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.cli import main as inctrl_run
from inctrl_runtime.detector import Detector
from inctrl_runtime.devices import parse_device
from inctrl_runtime.engines import TensorSpec
from inctrl_runtime.engines.tensorrt.buffers import aligned_rows, chunks
from inctrl_runtime.engines.tensorrt.cuda import (
    ComputeCapability,
    DeviceMemory,
    Event,
    GpuError,
    Stream,
    compute_capability,
    copy_on_device,
    copy_to_device,
    copy_to_host,
    cuda_runtime,
    gpu_name,
    gpu_problem,
)
from inctrl_runtime.engines.tensorrt.plan_io import Binding, PlanIO
from inctrl_runtime.engines.tensorrt.plans import (
    Build,
    PlanRecord,
    build_key,
    choose_build,
    plan_file,
    profile_sizes,
    profiles,
    read_builds,
    read_plan,
)
from inctrl_runtime.errors import BundleError, InputError

from helpers import run_main

LEAN = "tensorrt_lean_bindings"
L4 = ComputeCapability(8, 9)
NO_GPU = gpu_problem(0)
needs_no_gpu = pytest.mark.skipif(
    NO_GPU is None, reason="a CUDA GPU is usable here: these are the refusals without one"
)


def make_build(
    precision: str = "fp32",
    tensorrt: str = "11.4.0.106",
    capability: ComputeCapability = L4,
    version_compatible: bool = False,
    lean_runtime_embedded: bool = False,
    plans: dict[str, PlanRecord] | None = None,
) -> Build:
    key = build_key(precision, tensorrt, capability, version_compatible)
    return Build(
        key, precision, tensorrt, capability, version_compatible, lean_runtime_embedded,
        (1, 8, 32), (1, 2, 8), plans or {},
    )  # fmt: skip


def write_plans(bundle: Path, build: Build) -> Build:
    """Plan files of made-up bytes under engines/, and the build recorded in the manifest with
    their true sizes and sha256 (as the builder records real plans)."""
    (bundle / "engines").mkdir(exist_ok=True)
    plans = {}
    for graph in ("encoder", "head"):
        data = f"not a real {graph} plan".encode() * 100
        file = plan_file(graph, build.key)
        (bundle / file).write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        plans[graph] = PlanRecord(graph, file, digest, len(data), 12.5, {})
    build = dataclasses.replace(build, plans=plans)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {build.key: build.to_manifest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    return build


# ------------------------------------------------------------------ plan names and profiles
@pytest.mark.unit
def test_plan_names_carry_precision_tensorrt_version_and_gpu() -> None:
    assert build_key("fp16", "11.4.0.106", L4, False) == "fp16.trt11.4.sm89"
    key = build_key("fp32", "10.16.1.11", ComputeCapability.parse("10.0"), True)
    assert key == "fp32.trt10.16.sm100.vc"
    assert plan_file("encoder", key) == "engines/encoder.fp32.trt10.16.sm100.vc.plan"
    assert str(ComputeCapability.parse("12.0")) == "12.0"
    with pytest.raises(ValueError, match="MAJOR.MINOR"):
        ComputeCapability.parse("sm89")


@pytest.mark.unit
def test_profile_sizes_are_checked() -> None:
    assert profile_sizes([1, 8, 32], "--batch") == (1, 8, 32)
    assert profile_sizes([8], "--batch") == (8, 8, 8)
    for sizes in ([8, 1, 32], [0, 1, 2], [1, 2], [1, 2, 3, 4], [True, 2, 3], []):
        with pytest.raises(InputError, match="--shots .*MIN,OPT,MAX in increasing order"):
            profile_sizes(sizes, "--shots")


@pytest.mark.unit
def test_profiles_come_from_the_graph_contract(tiny_bundle: Path) -> None:
    sizes = Bundle.open(tiny_bundle).model  # tiny: L 3, P 225, D 64, E 32
    encoder = profiles("encoder", sizes, (1, 8, 32), (1, 2, 8))
    assert encoder == {"image": ((1, 3, 240, 240), (8, 3, 240, 240), (32, 3, 240, 240))}
    head = profiles("head", sizes, (2, 4, 16), (1, 2, 8))
    assert set(head) == {"embedding", "adapted", "patches", "ref_patches"}  # the others: fixed
    assert head["embedding"] == ((2, 32), (4, 32), (16, 32))
    assert head["patches"] == ((2, 3, 225, 64), (4, 3, 225, 64), (16, 3, 225, 64))
    assert head["ref_patches"] == ((3, 225, 64), (3, 450, 64), (3, 1800, 64))  # N = k x 225


# ------------------------------------------------------------------------ manifest records
@pytest.mark.unit
def test_build_records_round_trip_through_the_manifest() -> None:
    plan = PlanRecord("encoder", plan_file("encoder", "k"), "ab" * 32, 7, 1.5, {"image": (
        (1, 3, 240, 240), (8, 3, 240, 240), (32, 3, 240, 240))})  # fmt: skip
    build = dataclasses.replace(
        make_build(version_compatible=True), plans={"encoder": plan}, gpu="NVIDIA L4",
        verification={"passed": True, "max_abs_diff": 1e-5},
    )  # fmt: skip
    record = json.loads(json.dumps(build.to_manifest()))  # what the manifest file holds
    assert Build.from_manifest(build.key, record) == build
    assert read_builds({build.key: record}, Path("m.json")) == {build.key: build}
    assert read_builds(None, Path("m.json")) == {}
    del record["precision"]
    with pytest.raises(BundleError, match="m.json: its TensorRT engines record is incomplete"):
        read_builds({build.key: record}, Path("m.json"))


@pytest.mark.unit
def test_which_runtime_loads_which_plan() -> None:
    """NVIDIA's rules: a plain plan needs the full runtime of its exact version; a
    version-compatible one without the lean runtime needs that version's lean (preferred) or
    full runtime; one with it embedded, a full runtime of its version or newer, up one major."""
    same, newer = "11.4.0.106", "11.6.0.1"
    plain = make_build()
    assert plain.runtimes({"tensorrt": same, "tensorrt-lean": same}) == ["tensorrt"]
    assert plain.runtimes({"tensorrt": newer}) == []
    assert plain.runtimes({"tensorrt-lean": same}) == []
    excluded = make_build(version_compatible=True)
    assert excluded.runtimes({"tensorrt": same, "tensorrt-lean": same}) == [
        "tensorrt-lean",
        "tensorrt",
    ]
    assert excluded.runtimes({"tensorrt-lean": newer, "tensorrt": newer}) == []
    embedded = make_build(version_compatible=True, lean_runtime_embedded=True)
    assert embedded.runtimes({"tensorrt": newer}) == ["tensorrt"]
    assert embedded.runtimes({"tensorrt": "11.2.0.1", "tensorrt-lean": same}) == []
    ten = make_build("fp32", "10.16.1.11", L4, True, True)
    assert ten.runtimes({"tensorrt": same}) == ["tensorrt"]
    assert ten.runtimes({"tensorrt": "12.0.0.1"}) == []
    assert make_build(lean_runtime_embedded=True).runtimes({"tensorrt": newer}) == []


@pytest.mark.unit
def test_choose_build_refuses_what_this_machine_cannot_run() -> None:
    bundle, lean = Path("b"), {"tensorrt-lean": "11.4.0.106"}
    with pytest.raises(BundleError, match="b: has no TensorRT engines; build engines for it"):
        choose_build({}, bundle, "fp32", L4, lean)
    refusals = {
        "fp32.trt11.3.sm89": (make_build(tensorrt="11.3.0.1"), "needs the full TensorRT runtime"),
        "fp32.trt11.4.sm80": (make_build(capability=ComputeCapability(8, 0)), "capability 8.0"),
        "fp16.trt11.4.sm89": (make_build("fp16"), "fp16, the bundle's encoder is fp32"),
        "fp32.trt11.4.sm89": (make_build(), "needs the full TensorRT runtime 11.4.0.106"),
    }
    for key, (build, reason) in refusals.items():
        assert build.key == key
        with pytest.raises(BundleError) as refused:
            choose_build({key: build}, bundle, "fp32", L4, lean)
        message = str(refused.value)
        assert "\n" not in message and reason in message, message
        assert "inctrl-export tensorrt b" in message and "tensorrt-lean 11.4.0.106" in message
    vc = make_build(version_compatible=True)
    builds = {key: build for key, (build, _) in refusals.items()} | {vc.key: vc}
    assert choose_build(builds, bundle, "fp32", L4, lean) == (vc, "tensorrt-lean")
    assert choose_build(builds, bundle, "fp32", L4, {"tensorrt": "11.4.0.106"}, vc.key) == (
        vc,
        "tensorrt",
    )
    with pytest.raises(BundleError, match="has no TensorRT build 'x' \\(it has: fp32.trt11.3"):
        choose_build(builds, bundle, "fp32", L4, lean, "x")


@pytest.mark.unit
def test_a_plan_is_read_only_when_inside_the_bundle_and_its_sha256_matches(
    bundle: Path,
) -> None:
    build = write_plans(bundle, make_build())
    plan = build.plans["encoder"]
    assert read_plan(bundle, plan) == (bundle / plan.file).read_bytes()
    data = bytearray((bundle / plan.file).read_bytes())
    data[len(data) // 2] ^= 0x01
    (bundle / plan.file).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="size or sha256 differ .* --force"):
        read_plan(bundle, plan)
    (bundle / plan.file).unlink()
    with pytest.raises(BundleError, match="missing from the bundle .*rebuild with inctrl-export"):
        read_plan(bundle, plan)
    (bundle.parent / "outside.plan").write_bytes(b"x")
    for name in ("../outside.plan", str(bundle.parent / "outside.plan")):
        with pytest.raises(BundleError, match="not inside the bundle"):
            read_plan(bundle, dataclasses.replace(plan, file=name))


# ----------------------------------------------------- the feed checks of a plan's IO tensors
def head_io(bundle: Path) -> PlanIO:
    """The IO tensors a tiny head plan built with --batch 2,4,16 --shots 1,2,8 has (as
    ``read_bindings`` reads them from TensorRT)."""

    def batched(name: str, *rest: int) -> Binding:
        spec = TensorSpec(name, ("?", *rest), "float32")
        shapes = tuple((b, *rest) for b in (2, 4, 16))
        return Binding(spec, True, True, 4 * int(np.prod(rest)), shapes)  # type: ignore[arg-type]

    bank = TensorSpec("ref_patches", (3, "?", 64), "float32")
    inputs = [
        batched("embedding", 32),
        batched("patches", 3, 225, 64),
        Binding(bank, True, False, 0, ((3, 225, 64), (3, 450, 64), (3, 1800, 64))),
        Binding(TensorSpec("text_prior", (2, 32), "float32"), True, False, 0, None),
    ]
    score = Binding(TensorSpec("score", ("?",), "float32"), False, True, 4, None)
    bindings = {b.spec.name: b for b in [*inputs, score]}
    return PlanIO(bindings, bundle / "engines/head.plan", bundle, (1, 2, 8))


def feeds(batch: int, shots: int = 2) -> dict[str, np.ndarray]:
    return {
        "embedding": np.zeros((batch, 32)),
        "patches": np.zeros((batch, 3, 225, 64), np.float32),
        "ref_patches": np.zeros((3, shots * 225, 64), np.float32),
        "text_prior": np.zeros((2, 32), np.float32),
    }


@pytest.mark.unit
def test_feeds_are_checked_against_the_plan_profile() -> None:
    io = head_io(Path("b"))
    assert io.batch == (2, 4, 16)
    batch, values = io.check_feeds(feeds(40), 0)  # above the largest: it runs in chunks
    assert batch == 40 and values["embedding"].dtype == np.float32
    assert values["embedding"].flags.c_contiguous
    with pytest.raises(InputError, match="batch of 1 is below this plan's profile .* --batch 1,4"):
        io.check_feeds(feeds(1), 0)
    with pytest.raises(InputError) as refused:
        io.check_feeds(feeds(4, shots=9), 0)
    assert str(refused.value) == (
        "b/engines/head.plan: the bank's ref_patches holds 9 prompts (2025 patches); this plan "
        "was built for k 1..8 (225..1800 patches): rebuild with inctrl-export tensorrt b "
        "--shots 1,2,9 --force, or register at most 8 prompts"
    )
    renamed = feeds(4)
    renamed["prior"] = renamed.pop("text_prior")
    with pytest.raises(InputError, match="missing: text_prior; unexpected: prior"):
        io.check_feeds(renamed, 0)
    wrong = {**feeds(4), "patches": np.zeros((4, 3, 224, 64))}
    expected = r"patches has shape \[4, 3, 224, 64\], expected patches float32\[\?, 3, 225, 64\]"
    with pytest.raises(InputError, match=expected):
        io.check_feeds(wrong, 0)
    with pytest.raises(InputError, match="differ in batch size"):
        io.check_feeds({**feeds(4), "patches": feeds(5)["patches"]}, 0)
    with pytest.raises(InputError, match="has no input 'score'"):
        io.host_array("score", np.zeros(4))


@pytest.mark.unit
def test_a_batch_runs_in_profile_sized_chunks() -> None:
    assert chunks(5, 1, 8) == [(0, 5)]
    assert chunks(20, 1, 8) == [(0, 8), (8, 8), (16, 4)]
    assert chunks(17, 4, 8) == [(0, 8), (8, 8), (13, 4)]  # the rest (1) below the smallest
    assert chunks(12, 8, 8) == [(0, 8), (4, 8)]  # a fixed profile: the last run overlaps
    # TensorRT binds 256-byte aligned addresses: runs start at multiples of the aligned rows
    assert aligned_rows([4 * 3 * 240 * 240, 4 * 640]) == 1  # image, embedding: any row
    assert aligned_rows([4, 4 * 225, 4 * 32]) == 64  # score, patch map, a tiny embedding
    assert chunks(200, 1, 100, 64) == [(0, 64), (64, 64), (128, 64), (192, 8)]
    assert chunks(100, 1, 32, 64) == [(0, 32), (32, 32), (64, 32), (96, 4)]  # none: scratch
    assert chunks(50, 1, 100, 64) == [(0, 50)]
    for batch, smallest, largest, step in ((33, 2, 16, 1), (7, 7, 7, 1), (100, 3, 32, 8)):
        runs = chunks(batch, smallest, largest, step)
        covered = {row for first, rows in runs for row in range(first, first + rows)}
        assert covered == set(range(batch))
        assert all(smallest <= rows <= largest for _, rows in runs)


# --------------------------------------------------------------- devices and refusals here
@pytest.mark.unit
def test_device_names_say_which_tensorrt() -> None:
    assert str(parse_device("tensorrt:1")) == "tensorrt:1"
    assert str(parse_device("ort-tensorrt")) == "ort-tensorrt"
    with pytest.raises(InputError, match="ort-tensorrt, ort-tensorrt:N"):
        parse_device("trt")


@pytest.mark.unit
def test_onnxruntime_s_tensorrt_provider_has_its_own_device(bundle: Path) -> None:
    with pytest.raises(InputError, match="TensorrtExecutionProvider"):
        Detector.open(bundle, device="ort-tensorrt")


@pytest.mark.unit
def test_a_bundle_without_engines_is_refused_for_tensorrt(bundle: Path) -> None:
    with pytest.raises(BundleError) as refused:
        Detector.open(bundle, device="tensorrt")
    assert str(refused.value) == (
        f"{bundle}: has no TensorRT engines; build engines for it with inctrl-export tensorrt "
        f"{bundle} on that machine (or use --device cuda)"
    )


@pytest.mark.unit
@needs_no_gpu
def test_tensorrt_without_a_gpu_is_refused_in_one_line(bundle: Path) -> None:
    write_plans(bundle, make_build(version_compatible=True))
    with pytest.raises(InputError) as refused:
        Detector.open(bundle, device="tensorrt:1")
    message = str(refused.value)
    assert message.startswith("device 'tensorrt:1': no usable CUDA GPU (cudaGetDeviceCount: ")
    assert "\n" not in message and message.endswith("(or use --device cpu)")
    with pytest.raises(GpuError, match="CUDA cudaMalloc failed \\(cudaError"):
        DeviceMemory(16)


@pytest.mark.cli
@needs_no_gpu
def test_score_on_tensorrt_exits_2_with_one_line(bundle: Path, tmp_path: Path) -> None:
    query = tmp_path / "q.npy"
    np.save(query, np.zeros((240, 240, 3), np.uint8))
    args = ("score", bundle, "--category", "candle", "--device", "tensorrt", query)
    run_main(inctrl_run, *args).assert_refused("has no TensorRT engines", "inctrl-export tensorrt")
    write_plans(bundle, make_build())
    run_main(inctrl_run, *args).assert_refused("device 'tensorrt': no usable CUDA GPU")


@pytest.mark.unit
def test_the_tensorrt_runner_imports_without_torch() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import {LEAN}
        import inctrl_runtime.detector
        from inctrl_runtime.engines.tensorrt import cuda, engine, runtimes
        print(runtimes.tensorrt_runtimes()["tensorrt-lean"], cuda.gpu_problem() is None)
        side = ("torch", "inctrl", "inctrl_export", "onnxruntime")
        assert not [m for m in sys.modules if m.split(".")[0] in side], sorted(sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == importlib.import_module(LEAN).__version__


@pytest.mark.gpu
@pytest.mark.skipif(NO_GPU is not None, reason=f"needs a CUDA GPU: {NO_GPU}")
def test_the_cuda_layer_copies_times_and_names_the_gpu() -> None:
    stream, start, end = Stream(), Event(), Event()
    host = np.arange(4096, dtype=np.float32).reshape(64, 64)
    memory = DeviceMemory(host.nbytes)
    start.record(stream)
    copy_to_device(memory.ptr, host, stream)
    back = np.zeros_like(host)
    copy_to_host(back, memory.ptr, stream)
    other_memory = DeviceMemory(host.nbytes)
    copy_on_device(other_memory.ptr, memory.ptr + 4, host.nbytes - 4, stream)  # unaligned
    shifted = np.zeros_like(host)
    copy_to_host(shifted, other_memory.ptr, stream)
    end.record(stream)
    stream.synchronize()
    assert np.array_equal(back, host) and end.elapsed_ms(start) >= 0
    assert np.array_equal(shifted.ravel()[:-1], host.ravel()[1:])
    other = Stream()
    other.wait(end)  # orders work on another stream after ours, with no host wait
    other.synchronize()
    memory.free()
    memory.free()  # idempotent
    assert compute_capability(0).major >= 5 and gpu_name(0)
    count = cuda_runtime().cudaGetDeviceCount()[1]
    assert gpu_problem(count) == f"GPU {count} requested, this machine has {count}"
