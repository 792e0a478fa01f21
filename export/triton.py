"""``inctrl-export triton``: a bundle -> a Triton Inference Server model repository that travels.

The repository is the runtime's (``inctrl_runtime.triton.repository.write_repository``): the
entry point ``inctrl`` (image bytes + category; a python-backend model that runs the runtime's
decoding, tiling, head, decisions and regions, and calls the encoder model through the server),
and a copy of the bundle (manifest, checked files, banks) inside the entry's folder, so that the
folder can be mounted on another machine. This module chooses the encoder, shared by every category:

- ``onnxruntime``: platform ``onnxruntime_onnx``, the bundle's ``encoder.onnx`` as
  ``1/model.onnx``, its instances KIND_AUTO: on the server's GPUs when it has them (Triton's
  onnxruntime backend then runs its CUDA provider), else on the CPU, so that one repository
  loads on either (KIND_GPU would not load on a server without a GPU).
- ``tensorrt``: platform ``tensorrt_plan``, the encoder plan of a build that ``inctrl-export
  tensorrt`` recorded in the manifest, as ``1/model.plan``, on the GPU (KIND_GPU: a plan runs
  nowhere else). The plan is checked against its record (size, sha256) but never deserialized
  here, so this runs on machines without TensorRT; the server must be one it was built for (its
  GPU's compute capability, and a Triton release that carries the plan's TensorRT).
- ``python``: the runtime's python encoder (its onnxruntime engine on the CPU), as
  ``inctrl-run serve`` runs it.

Everything is checked before anything is written: the bundle (the writer checks its manifest and
every file's sha256 before it writes), the sizes, the categories, and for ``tensorrt`` the build
and that its profile takes ``max_batch``. The entry checks the encoder file against the manifest
when it loads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import DEFAULT_FPR
from inctrl_runtime.drift import DEFAULT_DELTA
from inctrl_runtime.engines.tensorrt.plans import Build, PlanRecord, read_plan
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import check_output_path
from inctrl_runtime.manifest import MANIFEST
from inctrl_runtime.triton.configs import DEFAULT_MAX_BATCH
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    ENCODER,
    ENCODER_FILES,
    ENCODERS,
    ENTRY,
    VERSION,
)
from inctrl_runtime.triton.repository import write_repository

DEFAULT_BACKEND = "onnxruntime"
PLAN_GRAPH = "encoder"
# Lets Triton's TensorRT backend deserialize version-compatible plans.
VERSION_COMPATIBLE_OPTION = "--backend-config=tensorrt,version-compatible=true"


@dataclass(frozen=True)
class TritonExport:
    """What ``export_triton`` wrote: the repository, its encoder backend, the encoder file
    Triton loads itself (None for the python encoder) and, for ``tensorrt``, the build its plan
    came from."""

    path: Path
    backend: str
    encoder_file: Path | None = None
    build: Build | None = None

    def summary(self) -> list[str]:
        """What was written and what a server needs to run it, a line each."""
        where = "on the GPU" if self.backend == "tensorrt" else "on the CPU"
        lines = [f"wrote {self.path}: the {self.backend} encoder, {where}"]
        if self.build is not None:
            lines.append(
                f"  its plan is build {self.build.key} ({self.build.describe()}): serve it on "
                f"such a GPU with a Triton release whose TensorRT is {self.build.tensorrt}"
            )
            if self.build.version_compatible:
                lines.append(f"  start tritonserver with {VERSION_COMPATIBLE_OPTION}")
        lines.append(f"  serve it: tritonserver --model-repository {self.path}")
        return lines


def export_triton(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    backend: str = DEFAULT_BACKEND,
    max_batch: int = DEFAULT_MAX_BATCH,
    instances: int = 1,
    categories: Sequence[str] | None = None,
    fpr: float = DEFAULT_FPR,
    region_fpr: float | None = None,
    engine: str | None = None,
    force: bool = False,
    drift_delta: float = DEFAULT_DELTA,
) -> TritonExport:
    """Write the Triton model repository of ``bundle`` into ``out``, with a copy of the bundle.

    Args:
        backend: what runs the encoder: ``onnxruntime``, ``tensorrt`` or ``python``.
        max_batch: ``max_batch_size`` of every model (a tensorrt plan's profile must take it).
        instances: instances of the encoder (and of the entry model).
        categories: the categories the entry loads at start, each registered (default: every
            registered one; others are read when a request first names them).
        fpr: the false-positive rate of the decisions.
        region_fpr: the rate of good parts that may get any region (None: ``fpr``).
        engine: tensorrt only: the key of the build to serve the encoder plan of (default: the
            bundle's one build of its encoder precision).
        force: replace an existing ``out``.
        drift_delta: the false-alarm probability of the calibrated categories' drift monitors
            (the repository's copy of the bundle keeps its own monitors).
    """
    check_backend(backend, engine)
    out = Path(out)
    check_out(Path(bundle), out, force)
    encoder_file, build = None, None
    if backend == "tensorrt":
        # Sizes only here: the writer hashes every file of the bundle before it writes.
        opened = Bundle.open(bundle, check_files=False)
        build, plan = choose_plan(opened, max_batch, engine)
        read_plan(opened.path, plan)
        encoder_file = opened.path / plan.file
    write_repository(
        bundle, out, encoder=backend, max_batch=max_batch, instances=instances,
        categories=categories, fpr=fpr, region_fpr=region_fpr, copy_bundle=True,
        encoder_file=encoder_file, overwrite=force, drift_delta=drift_delta,
    )  # fmt: skip
    served = out / ENCODER / VERSION / ENCODER_FILES[backend] if backend in ENCODER_FILES else None
    return TritonExport(out, backend, served, build)


def check_backend(backend: str, engine: str | None = None) -> None:
    """Refuse, in one line, an unknown backend and an ``engine`` for another backend than
    ``tensorrt``."""
    if backend not in ENCODERS:
        raise InputError(f"unknown --backend {backend!r}: choose {', '.join(ENCODERS)}")
    if engine is not None and backend != "tensorrt":
        raise InputError(
            f"--engine {engine} names a TensorRT build: use it with --backend tensorrt"
        )


def check_out(bundle: Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that exists (unless ``force``), that holds the bundle exported (a
    repository made from a copy of it included), and one that is a bundle, lies inside one or
    holds one other than an earlier repository's copy (``files.check_output_path``: replacing
    it would delete the bundle, its banks and calibrations)."""
    if out.resolve() in (bundle.resolve(), *bundle.resolve().parents):
        raise InputError(
            f"--out {out}: holds the bundle {bundle}, which replacing it would delete; choose "
            "another --out"
        )
    check_output_path(out, "--out", replaces=force, own=[f"{ENTRY}/{BUNDLE_COPY}"])
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; --force to replace it, or choose another --out")


def choose_plan(
    bundle: Bundle, max_batch: int, engine: str | None = None
) -> tuple[Build, PlanRecord]:
    """The TensorRT build whose encoder plan the repository serves, and that plan.

    As the runtime chooses (``inctrl_runtime.engines.tensorrt.plans.choose_build``): a build of the
    bundle's encoder precision, or the one ``engine`` names. Unlike the runtime's, the GPU and
    TensorRT that will run it are the server's, not this machine's, so where several builds
    fit, ``engine`` must say which. Refused in one line: no builds (the ``inctrl-export
    tensorrt`` to run), none that fits, several, or a profile whose largest batch is under
    ``max_batch`` (the ``--batch`` to rebuild with)."""
    where = bundle.path / MANIFEST
    builds = bundle.builds
    rebuild = f"inctrl-export tensorrt {bundle.path} --batch 1,8,{max_batch}"
    if not builds:
        raise BundleError(
            f"{bundle.path}: has no TensorRT engines; build them with `{rebuild}` on a machine "
            "with the server's GPU and TensorRT (or export with --backend onnxruntime)"
        )
    if engine is not None and engine not in builds:
        raise BundleError(
            f"{bundle.path}: has no TensorRT build {engine!r} (it has: {', '.join(builds)})"
        )
    precision = bundle.graphs["encoder"].precision
    named = [builds[engine]] if engine is not None else list(builds.values())
    fitting = [b for b in named if b.precision == precision and PLAN_GRAPH in b.plans]
    if not fitting:
        found = ", ".join(f"{b.key} ({b.precision})" for b in named)
        raise BundleError(
            f"{where}: no TensorRT build holds a plan of the bundle's {precision} encoder "
            f"(found: {found}); build one with `{rebuild} --force`"
        )
    if len(fitting) > 1:
        raise InputError(
            f"{bundle.path}: has several TensorRT builds ({', '.join(b.key for b in fitting)}); "
            "name the one for the server's GPU and TensorRT with --engine KEY"
        )
    build = fitting[0]
    plan = build.plans[PLAN_GRAPH]
    largest = min((shapes[2][0] for shapes in plan.profiles.values()), default=build.batch[2])
    if max_batch > largest:
        opt = min(build.batch[1], max_batch)
        raise InputError(
            f"{bundle.path / plan.file}: its profile takes batches up to {largest}, fewer than "
            f"--max-batch {max_batch}; rebuild with `inctrl-export tensorrt {bundle.path} "
            f"--batch 1,{opt},{max_batch} --force`, or export with --max-batch {largest}"
        )
    return build, plan
