"""``inctrl-export tensorrt``: a bundle's ONNX graphs -> TensorRT plans in its ``engines/``,
checked against PyTorch like the ONNX export.

A plan's precision is its graph's (strongly typed networks): fp32, fp16, or int8 from an encoder
whose Q/DQ nodes are symmetric int8 (its manifest record says so), where TensorRT takes each
tensor's type and scale from those nodes; TensorRT 11 has no INT8 flag and no calibrator.

Order: everything cheap is refused first (the bundle, the precision, the profile sizes, the
workspace, the source checkpoint, plans already there), then whether TensorRT's builder can run
here (``builder_problem``); then both plans are built (``inctrl_export.tensorrt_build``) with
one timing cache, written atomically into the bundle, opened by the runtime's TensorRT engines
and compared with PyTorch on inputs other than the profile's opt shape; last, the build and its
check are recorded in the manifest's ``engines`` object. A failed check keeps the plans,
recorded as failed (exit 1); an error before the record removes the new plans.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from inctrl.loading import load_model
from inctrl_export.bundle import CHECK_SEED, Log, check_images
from inctrl_export.parity import ParityReport, compare, pass_mark
from inctrl_export.tensorrt_checks import (
    check_batch,
    check_no_plans,
    check_precision,
    sizes_of,
)
from inctrl_export.verify import check_source_checkpoint
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.contract import GRAPHS
from inctrl_runtime.engines.tensorrt.plans import (
    Build,
    PlanRecord,
    Profile,
    build_key,
    plan_file,
    profile_sizes,
    profiles,
)
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import WriteError, atomic_path, check_output_path
from inctrl_runtime.manifest import record_build

if TYPE_CHECKING:
    from inctrl_export.tensorrt_build import PlanSettings

DEFAULT_BATCH = (1, 8, 32)
DEFAULT_SHOTS = (1, 2, 8)
TIMING_CACHE_SUFFIX = ".timing-cache"  # beside the bundle folder: <bundle>.timing-cache
BUILD_GPU = 0  # TensorRT builds for the current CUDA device
INSTALL_BUILDER = (
    'pip install "inctrl[tensorrt]" on a machine with an NVIDIA GPU and NVIDIA\'s TensorRT'
)
INSTALL_LEAN = 'pip install "inctrl[tensorrt-lean]"'
# Every TensorRT name inctrl_export.tensorrt_build uses, by the class or module that defines it
# (here, so that it reads without TensorRT). TensorRT 10 and 11 document each; 11 removed
# EXPLICIT_BATCH, the FP16/INT8 builder flags and the int8 calibrators (a strongly typed network
# takes its precision from the graph, int8 from its Q/DQ nodes) and deprecated STRONGLY_TYPED
# (always on).
BUILDER_API: dict[str, tuple[str, ...]] = {
    "tensorrt": (
        "__version__",
        "Builder",
        "BuilderFlag",
        "ILogger",
        "MemoryPoolType",
        "NetworkDefinitionCreationFlag",
        "OnnxParser",
    ),
    "Builder": (
        "build_serialized_network",
        "create_builder_config",
        "create_network",
        "create_optimization_profile",
    ),
    "OnnxParser": ("get_error", "num_errors", "parse"),
    "ParserError": ("desc", "node"),
    "IBuilderConfig": (
        "add_optimization_profile",
        "clear_flag",
        "create_timing_cache",
        "set_flag",
        "set_memory_pool_limit",
        "set_timing_cache",
    ),
    "IOptimizationProfile": ("set_shape",),
    "ITimingCache": ("serialize",),
    "ILogger": ("Severity", "__init__", "log"),
    "ILogger.Severity": ("ERROR", "INTERNAL_ERROR", "WARNING"),
    "BuilderFlag": ("EXCLUDE_LEAN_RUNTIME", "TF32", "VERSION_COMPATIBLE"),
    "MemoryPoolType": ("WORKSPACE",),
    "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED",),
}


@dataclass
class TensorrtBuild:
    """What ``build_engines`` made: the build as recorded, its check, and step times."""

    bundle: Path
    build: Build
    timing_cache: Path
    report: ParityReport | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def default_timing_cache(bundle: str | os.PathLike) -> Path:
    """``<bundle>.timing-cache`` beside the bundle folder (machine state: it does not travel
    with the bundle)."""
    bundle = Path(bundle)
    return bundle.parent / f"{bundle.name}{TIMING_CACHE_SUFFIX}"


def builder_problem() -> str | None:
    """Why TensorRT engines cannot be built here (no TensorRT builder, no CUDA GPU: each that
    holds, and what to install), or None."""
    from inctrl_runtime.engines.tensorrt.cuda import gpu_problem

    problems = []
    try:
        import inctrl_export.tensorrt_build  # noqa: F401  (imports TensorRT's builder)
    except ImportError as err:
        problems.append(f"the TensorRT builder is missing ({err})")
    gpu = gpu_problem(BUILD_GPU)
    if gpu is not None:
        problems.append(gpu)
    if not problems:
        return None
    return f"cannot build TensorRT engines here: {' and '.join(problems)}; {INSTALL_BUILDER}"


def build_engines(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    batch: Sequence[int] | str = DEFAULT_BATCH,
    shots: Sequence[int] | str = DEFAULT_SHOTS,
    timing_cache: str | os.PathLike | None = None,
    version_compatible: bool = False,
    workspace_mib: int | None = None,
    precision: str | None = None,
    force: bool = False,
    verify: bool = True,
    atol: float | None = None,
    log: Log = lambda message: None,
) -> TensorrtBuild:
    """Build the encoder and head plans of a bundle for this GPU, record them, check them.

    Args:
        checkpoint: the checkpoint the bundle was exported from (its sha256 must be the
            manifest's), for the check against PyTorch; default for a demo bundle: the demo.
        batch, shots: the profile's (min, opt, max) batch sizes and prompt counts k (the head's
            prompt patches are k x P), or one size; "1,8,32" as the command line gives them.
        timing_cache: read before and written after the builds (default
            ``default_timing_cache``); one that does not fit this GPU is replaced.
        version_compatible: plans for the lean TensorRT runtime (excluded from the plans).
        workspace_mib: TensorRT's workspace limit (default: TensorRT's, the GPU's memory).
        precision: the bundle's encoder precision (the default); any other is refused, and
            int8 unless the encoder is symmetric Q/DQ int8 (``tensorrt_checks.TRT_QUANTIZATION``).
        force: replace this GPU's and TensorRT's plans of the same kind.
        verify: run the check; ``atol`` is its pass mark (default: the contract's).
        log: called with one line per step.
    """
    opened = Bundle.open(bundle)
    precision = check_precision(opened, precision)
    batch = check_batch(sizes_of(batch))
    shots = profile_sizes(sizes_of(shots), "--shots")
    if workspace_mib is not None and workspace_mib < 1:
        raise InputError(f"--workspace must be at least 1 MiB, got {workspace_mib}")
    cache_path = Path(timing_cache) if timing_cache else default_timing_cache(opened.path)
    if cache_path.is_dir():
        raise InputError(f"--timing-cache {cache_path}: is a folder; name a file")
    check_output_path(cache_path, "--timing-cache")
    atol = pass_mark(atol, precision)
    if verify:
        check_source_checkpoint(opened, checkpoint)
    problem = builder_problem()
    if problem is not None:
        raise InputError(problem)

    from inctrl_export.tensorrt_build import VERSION, PlanSettings
    from inctrl_runtime.engines.tensorrt.cuda import compute_capability, gpu_name

    capability = compute_capability(BUILD_GPU)
    key = build_key(precision, VERSION, capability, version_compatible)
    check_no_plans(opened, key, force)
    if verify and version_compatible:
        _check_lean_runtime(VERSION)
    build = Build(
        key=key,
        precision=precision,
        tensorrt=VERSION,
        compute_capability=capability,
        version_compatible=version_compatible,
        lean_runtime_embedded=False,  # EXCLUDE_LEAN_RUNTIME: the edge's lean runtime runs them
        batch=batch,
        shots=shots,
        plans={},
        gpu=gpu_name(BUILD_GPU),
    )
    settings = PlanSettings(workspace_mib, version_compatible)
    build, plans, seconds = _build_plans(opened, build, settings, cache_path, log)
    result = TensorrtBuild(opened.path, build, cache_path, seconds=seconds)
    record_build(opened.path, key, None)  # --force: the old record must not name the new files
    try:
        for graph, plan in build.plans.items():
            with atomic_path(opened.path / plan.file) as tmp:
                tmp.write_bytes(plans[graph])
        if verify:
            began = time.perf_counter()
            result.report = self_check(opened, build, checkpoint, clip_weights, atol, log)
            seconds["verify"] = time.perf_counter() - began
            log(f"checked against PyTorch ({seconds['verify']:.1f} s)")
            result.build = dataclasses.replace(build, verification=result.report.to_dict())
        record_build(opened.path, key, result.build.to_manifest())
    except BaseException:
        for plan in build.plans.values():
            (opened.path / plan.file).unlink(missing_ok=True)
        raise
    return result


def _build_plans(
    bundle: Bundle, build: Build, settings: PlanSettings, cache_path: Path, log: Log
) -> tuple[Build, dict[str, bytes], dict[str, float]]:
    """Both graphs' plans for ``build`` (its plans filled in), built with the timing cache at
    ``cache_path`` (written back after; a failed write is a note, not worth the plans), their
    bytes and build seconds."""
    from inctrl_export.tensorrt_build import PlanBuilder

    builder = PlanBuilder(cache_path.read_bytes() if cache_path.is_file() else b"")
    records, plans, seconds = {}, {}, {}
    for graph, shapes in graph_profiles(bundle, build.batch, build.shots).items():
        file = plan_file(graph, build.key)
        log(f"building {file} ({build.describe()}): this takes minutes")
        began = time.perf_counter()
        graph_file, precision = bundle.graphs[graph].file, bundle.graphs[graph].precision
        plans[graph] = plan = builder.build(graph_file, precision, shapes, settings)
        seconds[graph] = time.perf_counter() - began
        digest = hashlib.sha256(plan).hexdigest()
        records[graph] = PlanRecord(graph, file, digest, len(plan), seconds[graph], shapes)
        log(f"built {file}: {len(plan) / 2**20:.1f} MB in {seconds[graph]:.1f} s")
    for note in builder.notes:
        log(f"note: {cache_path}: {note}")
    try:
        with atomic_path(cache_path) as tmp:
            tmp.write_bytes(builder.timing_cache())
    except WriteError as err:
        log(f"note: the timing cache was not saved: {err}")
    return dataclasses.replace(build, plans=records), plans, seconds


def graph_profiles(
    bundle: Bundle, batch: tuple[int, int, int], shots: tuple[int, int, int]
) -> dict[str, dict[str, Profile]]:
    """Each graph's optimization profile: input name -> (min, opt, max) shapes, from the graph
    contract and the bundle's model sizes: the batch axis of both graphs from ``batch``, the
    head's prompt patches from ``shots`` (k x P)."""
    return {graph: profiles(graph, bundle.model, batch, shots) for graph in GRAPHS}


def _check_lean_runtime(version: str) -> None:
    """Version-compatible plans (the lean runtime excluded) are checked on the lean runtime of
    the builder's version, which must be importable here."""
    from inctrl_runtime.engines.tensorrt.runtimes import runtime_problems, tensorrt_runtimes

    found = tensorrt_runtimes().get("tensorrt-lean")
    if found != version:
        why = f"it is {found}" if found else runtime_problems().get("tensorrt-lean", "missing")
        raise InputError(
            f"--version-compatible plans run on the lean TensorRT runtime {version}, which this "
            f"machine lacks ({why}); {INSTALL_LEAN} (TensorRT {version}) to check them, or "
            "--no-verify"
        )


def self_check(
    bundle: Bundle,
    build: Build,
    checkpoint: str | os.PathLike | None,
    clip_weights: str | os.PathLike | None,
    atol: float,
    log: Log,
) -> ParityReport:
    """``build``'s plans, run by the runtime's TensorRT engines, vs PyTorch (fp32, on the CPU)
    on the export's seeded check images, with a batch and k inside the profile other than its
    opt."""
    from inctrl_runtime.detector import Detector

    model = load_model(checkpoint, clip_weights, notice=log)
    shots, queries = off_opt(build.shots), off_opt(build.batch)
    detector = Detector.open(bundle.path, device="tensorrt", check_files=False, build=build)
    try:
        images = check_images(shots + queries, CHECK_SEED)
        prompts, rest = images[:shots], images[shots:]
        category = bundle.categories[0]
        return compare(model, detector, category, prompts, rest, atol, batch_size=queries)
    finally:
        detector.close()


def off_opt(sizes: tuple[int, int, int]) -> int:
    """A size inside a profile's (min, opt, max) other than opt where it allows one: opt + 1,
    else opt - 1 (opt for a fixed profile)."""
    low, opt, high = sizes
    if opt + 1 <= high:
        return opt + 1
    return opt - 1 if opt - 1 >= low else opt
