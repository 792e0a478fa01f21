"""TensorRT plans in a bundle: their names, optimization profiles and manifest records, and the
checks a plan passes before any TensorRT code reads it (torch-free, TensorRT-free).

The builder (``inctrl_export.tensorrt``) writes plans under ``engines/`` and one record per build
in the manifest's ``engines`` object; the runner (``engine``) picks the build that this GPU and
this TensorRT can run and checks its plans here. Plans are not among the
manifest's ``files``, so a bundle shipped without ``engines/`` still opens for onnxruntime.

    "engines": {"fp16.trt11.4.sm89": {
        "precision": "fp16", "tensorrt": "11.4.0.106", "compute_capability": "8.9",
        "version_compatible": false, "lean_runtime_embedded": false,
        "batch": [1, 8, 32], "shots": [1, 2, 8], "gpu": "NVIDIA L4", "built": "...",
        "plans": {"encoder": {"file": "engines/encoder.fp16.trt11.4.sm89.plan", "sha256": "...",
                              "bytes": 123, "build_seconds": 61.2,
                              "profiles": {"image": [[1, 3, 240, 240], [8, ...], [32, ...]]}},
                  "head": {...}},
        "verification": {...}}}
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from inctrl_runtime.contract import (
    BATCH_AXIS,
    GRAPH_CONTRACT,
    PROMPT_AXIS,
    ModelSizes,
    graph_shapes,
)
from inctrl_runtime.engines.tensorrt.cuda import ComputeCapability
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.manifest import MANIFEST, ExportCheck

# The advice for a plan that cannot be used as it is.
REBUILD = "rebuild with inctrl-export tensorrt {bundle} --force"

ENGINES_DIR = "engines"
PLAN_SUFFIX = ".plan"
# The precisions a native engine is built in: the bundle's own (strongly typed networks; int8
# from an encoder with symmetric Q/DQ nodes, which give TensorRT its types and scales).
TRT_PRECISIONS = ("fp32", "fp16", "int8")
BUILD_ON_THAT_MACHINE = "build engines for it with inctrl-export tensorrt {bundle} on that machine"

Shape = tuple[int, ...]
Profile = tuple[Shape, Shape, Shape]  # min, opt, max


def short_version(version: str) -> str:
    """``11.4.0.106`` -> ``11.4``: the part of a TensorRT version a plan's name carries."""
    return ".".join(str(version).split(".")[:2])


def build_key(
    precision: str, tensorrt: str, capability: ComputeCapability, version_compatible: bool
) -> str:
    """The name of one build: ``fp16.trt11.4.sm89`` (``.vc`` for a version-compatible one)."""
    key = f"{precision}.trt{short_version(tensorrt)}.{capability.sm}"
    return key + ".vc" if version_compatible else key


def plan_file(graph: str, key: str) -> str:
    """A plan's path inside the bundle: ``engines/encoder.fp16.trt11.4.sm89.plan``."""
    return f"{ENGINES_DIR}/{graph}.{key}{PLAN_SUFFIX}"


def profile_sizes(sizes: Sequence[int], option: str) -> tuple[int, int, int]:
    """``--batch`` / ``--shots`` as a profile's (min, opt, max): one size (a fixed profile) or
    three in increasing order, each at least 1."""
    sizes = tuple(sizes)
    valid = len(sizes) in (1, 3) and all(
        isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes
    )
    if not valid or list(sizes) != sorted(sizes):
        raise InputError(
            f"{option} {','.join(map(str, sizes))}: give MIN,OPT,MAX in increasing order "
            "(e.g. 1,8,32) or one size for a fixed profile"
        )
    return (sizes[0],) * 3 if len(sizes) == 1 else sizes  # type: ignore[return-value]


def profiles(
    graph: str,
    sizes: ModelSizes,
    batch: tuple[int, int, int],
    shots: tuple[int, int, int],
) -> dict[str, Profile]:
    """Min/opt/max shapes of every input of ``graph`` whose shape has a dynamic axis
    (``contract.graph_shapes`` at each of the three sizes): the model's ``sizes``, the batch
    sizes and the prompt counts k (N = k x P prompt patches)."""
    dynamic = (BATCH_AXIS, PROMPT_AXIS)
    prompts = [k * sizes.num_patches for k in shots]
    shapes = [
        graph_shapes(graph, sizes, {BATCH_AXIS: batch[i], PROMPT_AXIS: prompts[i]})[0]
        for i in range(3)
    ]
    return {
        name: tuple(shape[name] for shape in shapes)  # type: ignore[misc]
        for name, letters in GRAPH_CONTRACT[graph][0].items()
        if any(letter in dynamic for letter in letters)
    }


@dataclass(frozen=True)
class PlanRecord:
    """One plan as the manifest records it."""

    graph: str
    file: str
    sha256: str
    bytes: int
    build_seconds: float
    profiles: dict[str, Profile]

    @classmethod
    def from_manifest(cls, graph: str, record: Mapping) -> PlanRecord:
        return cls(
            graph=graph,
            file=str(record["file"]),
            sha256=str(record["sha256"]),
            bytes=int(record["bytes"]),
            build_seconds=float(record["build_seconds"]),
            profiles={
                name: tuple(tuple(int(d) for d in shape) for shape in shapes)  # type: ignore[misc]
                for name, shapes in record["profiles"].items()
            },
        )

    def to_manifest(self) -> dict:
        return {
            "file": self.file,
            "sha256": self.sha256,
            "bytes": self.bytes,
            "build_seconds": round(self.build_seconds, 3),
            "profiles": {n: [list(s) for s in shapes] for n, shapes in self.profiles.items()},
        }


@dataclass(frozen=True)
class Build:
    """One ``inctrl-export tensorrt`` run: the encoder and head plans of one precision, built
    by one TensorRT version for one compute capability."""

    key: str
    precision: str
    tensorrt: str
    compute_capability: ComputeCapability
    version_compatible: bool
    lean_runtime_embedded: bool
    batch: tuple[int, int, int]
    shots: tuple[int, int, int]
    plans: dict[str, PlanRecord]
    gpu: str = ""
    verification: dict | None = None  # the build's own check, as recorded

    @functools.cached_property
    def check(self) -> ExportCheck | None:
        """The build's own check against PyTorch (None: not run)."""
        return ExportCheck.from_manifest(self.verification)

    @classmethod
    def from_manifest(cls, key: str, record: Mapping) -> Build:
        ExportCheck.from_manifest(record.get("verification"), f"engines.{key}.verification")
        return cls(
            key=key,
            precision=str(record["precision"]),
            tensorrt=str(record["tensorrt"]),
            compute_capability=ComputeCapability.parse(record["compute_capability"]),
            version_compatible=bool(record["version_compatible"]),
            lean_runtime_embedded=bool(record.get("lean_runtime_embedded", False)),
            batch=tuple(int(s) for s in record["batch"]),  # type: ignore[arg-type]
            shots=tuple(int(s) for s in record["shots"]),  # type: ignore[arg-type]
            plans={g: PlanRecord.from_manifest(g, r) for g, r in record["plans"].items()},
            gpu=str(record.get("gpu", "")),
            verification=record.get("verification"),
        )

    def to_manifest(self) -> dict:
        record = {
            "precision": self.precision,
            "tensorrt": self.tensorrt,
            "compute_capability": str(self.compute_capability),
            "version_compatible": self.version_compatible,
            "lean_runtime_embedded": self.lean_runtime_embedded,
            "batch": list(self.batch),
            "shots": list(self.shots),
            "gpu": self.gpu,
            "plans": {graph: plan.to_manifest() for graph, plan in self.plans.items()},
        }
        if self.verification is not None:
            record["verification"] = self.verification
        return record

    def describe(self) -> str:
        kind = "version-compatible" if self.version_compatible else "TensorRT"
        return (
            f"{self.precision} {kind} {self.tensorrt} plans for compute capability "
            f"{self.compute_capability}"
        )

    def runtimes(self, available: Mapping[str, str]) -> list[str]:
        """Which of the ``available`` TensorRT runtimes (``tensorrt`` / ``tensorrt-lean`` ->
        version) can deserialize these plans, the preferred first (NVIDIA's engine
        compatibility rules).

        A plan that is not version-compatible runs only on the full runtime of the version that
        built it. A version-compatible plan whose lean runtime was excluded runs on the lean
        runtime of the builder's version (the one the edge installs; preferred) or on the full
        runtime of that version. One with the lean runtime embedded runs on a full runtime of
        the builder's version or newer, of the same major version or the next (TensorRT 10
        plans on 11; never across two), which then loads host code from the plan."""
        found = []
        lean, full = available.get("tensorrt-lean"), available.get("tensorrt")
        if self.version_compatible and not self.lean_runtime_embedded and lean == self.tensorrt:
            found.append("tensorrt-lean")
        embedded = self.version_compatible and self.lean_runtime_embedded
        if full == self.tensorrt or (embedded and full is not None and _runs(full, self.tensorrt)):
            found.append("tensorrt")
        return found


def _version(version: str) -> tuple[int, ...]:
    parts = str(version).split(".")
    return tuple(int(p) if p.isdigit() else -1 for p in parts)


def _runs(runtime: str, built: str) -> bool:
    """Whether a full runtime of version ``runtime`` runs version-compatible plans of ``built``."""
    have, need = _version(runtime), _version(built)
    return have >= need and have[0] - need[0] in (0, 1)


def read_builds(record: object, where: Path) -> dict[str, Build]:
    """The TensorRT builds of a manifest's ``engines`` record, by key ({} for none);
    ``where`` (the manifest) names it in the error."""
    try:
        return {key: Build.from_manifest(key, value) for key, value in (record or {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise BundleError(
            f"{where}: its TensorRT engines record is incomplete or invalid ({err}); rebuild "
            "them with inctrl-export tensorrt --force"
        ) from None


def require_builds(builds: Mapping[str, Build], bundle: Path) -> None:
    """Refuse a bundle that records no TensorRT builds, in one line saying how to build them."""
    if not builds:
        raise BundleError(
            f"{bundle}: has no TensorRT engines; {BUILD_ON_THAT_MACHINE.format(bundle=bundle)} "
            "(or use --device cuda)"
        )


def choose_build(
    builds: Mapping[str, Build],
    bundle: Path,
    precision: str,
    capability: ComputeCapability,
    available: Mapping[str, str],
    key: str | None = None,
) -> tuple[Build, str]:
    """The build to run on a GPU of ``capability`` with the ``available`` TensorRT runtimes
    (name -> version), and the runtime to run it with; ``key`` asks for one build. Refused in
    one line that says what was found and how to rebuild."""
    require_builds(builds, bundle)
    rebuild = BUILD_ON_THAT_MACHINE.format(bundle=bundle)
    if key is not None and key not in builds:
        raise BundleError(f"{bundle}: has no TensorRT build {key!r} (it has: {', '.join(builds)})")
    candidates = [builds[key]] if key is not None else list(builds.values())
    runtimes = ", ".join(f"{n} {v}" for n, v in available.items()) or "no TensorRT runtime"
    mismatch = []
    for build in candidates:
        if build.precision != precision:
            mismatch.append(f"{build.key}: {build.precision}, the bundle's encoder is {precision}")
        elif build.compute_capability != capability:
            mismatch.append(f"{build.key}: for compute capability {build.compute_capability}")
        elif not build.runtimes(available):
            need = "the lean" if build.version_compatible else "the full"
            mismatch.append(f"{build.key}: needs {need} TensorRT runtime {build.tensorrt}")
        else:
            return build, build.runtimes(available)[0]
    raise BundleError(
        f"{bundle}: no TensorRT engines this machine can run (GPU compute capability "
        f"{capability}, {runtimes}; {'; '.join(mismatch)}); {rebuild}, with --force to replace"
    )


def read_plan(bundle: Path, plan: PlanRecord) -> bytes:
    """A plan's bytes, once its file is inside the bundle and its size and sha256 match the
    manifest (before any TensorRT code, which may load host code from it, sees it)."""
    from inctrl_runtime.bundle import inside

    rebuild = REBUILD.format(bundle=bundle)
    path = inside(bundle, plan.file, bundle / MANIFEST)
    if not path.is_file():
        raise BundleError(
            f"{path}: missing from the bundle (its manifest records this TensorRT plan); {rebuild}"
        )
    data = path.read_bytes()  # hashed as read: the bytes checked are the bytes deserialized
    if len(data) != plan.bytes or hashlib.sha256(data).hexdigest() != plan.sha256:
        raise BundleError(
            f"{path}: size or sha256 differ from the manifest (tampered with or damaged); {rebuild}"
        )
    return data
