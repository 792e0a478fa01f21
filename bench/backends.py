"""The backends inctrl-bench knows (the catalogue), how ``--backend`` selects them, and why one
cannot run here. What each runs (checkpoints, bundles, plans) is ``inctrl_bench.artifacts``'."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inctrl_bench.machine import import_problem
from inctrl_runtime.errors import InputError

# The GPU that --device cuda benches (the runtime's "cuda" and "tensorrt" devices mean GPU 0).
GPU_INDEX = 0
# A VGA camera frame (height, width): the bench's queries are seeded random ones.
FRAME = (480, 640)
# With --tiles, a larger frame (height, width): the synthetic data's large frames.
TILED_FRAME = (768, 1024)


def random_frames(
    rng: np.random.Generator, count: int, frame: tuple[int, int] = FRAME
) -> list[np.ndarray]:
    """``count`` random uint8 camera frames (``frame``: height, width; RGB)."""
    return [rng.integers(0, 256, (*frame, 3), np.uint8) for _ in range(count)]


class Unavailable(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """One way of running InCTRL: ``authors`` and ``torch`` run the PyTorch model (on
    ``--device`` unless ``device`` is set), ``onnxruntime`` a bundle's ONNX graphs and
    ``tensorrt`` its native TensorRT plans, both through ``inctrl_runtime.Detector`` on
    ``runtime_device``, ``triton`` a bundle served by tritonserver (``inctrl-run serve``).
    ``precision`` is the encoder's."""

    name: str
    kind: str
    precision: str
    device: str | None = None
    runtime_device: str | None = None

    @property
    def uses_torch(self) -> bool:
        return self.kind in ("authors", "torch")


CATALOGUE = (
    Backend("authors", "authors", "fp32"),
    Backend("torch-fp32", "torch", "fp32"),
    Backend("torch-bf16", "torch", "bf16"),
    Backend("torch-fp16", "torch", "fp16", "cuda"),
    Backend("onnxruntime-cpu-fp32", "onnxruntime", "fp32", "cpu", "cpu"),
    Backend("onnxruntime-cpu-int8", "onnxruntime", "int8", "cpu", "cpu"),
    Backend("onnxruntime-cuda-fp32", "onnxruntime", "fp32", "cuda", "cuda"),
    Backend("onnxruntime-cuda-fp16", "onnxruntime", "fp16", "cuda", "cuda"),
    # onnxruntime's TensorRT execution provider: it builds its own engines from the ONNX graphs.
    Backend("onnxruntime-tensorrt-fp32", "onnxruntime", "fp32", "cuda", "ort-tensorrt"),
    Backend("onnxruntime-tensorrt-fp16", "onnxruntime", "fp16", "cuda", "ort-tensorrt"),
    # Native TensorRT plans (inctrl-export tensorrt), run by the runtime's TrtEngine.
    Backend("tensorrt-fp32", "tensorrt", "fp32", "cuda", "tensorrt"),
    Backend("tensorrt-fp16", "tensorrt", "fp16", "cuda", "tensorrt"),
    Backend("tensorrt-int8", "tensorrt", "int8", "cuda", "tensorrt"),
)


# Rows benched only when named: they start a server of their own (bench/triton_backend.py).
SERVED = (Backend("triton", "triton", "fp32", "cpu", "cpu"),)


def select_backends(patterns: Sequence[str]) -> list[Backend]:
    """The backends named by name, prefix or comma-separated list, in catalogue order (the
    ``SERVED`` ones last); or all of ``CATALOGUE``."""
    if not patterns:
        return list(CATALOGUE)
    known = (*CATALOGUE, *SERVED)
    names, chosen = [b.name for b in known], set()
    for pattern in (part.strip() for value in patterns for part in value.split(",")):
        matches = {name for name in names if name.startswith(pattern)}
        if not pattern or not matches:
            raise InputError(
                f"unknown backend {pattern!r}; give a name or prefix of {', '.join(names)}"
            )
        chosen |= matches
    return [b for b in known if b.name in chosen]


def _tensorrt_problem() -> str | None:
    """What keeps native TensorRT plans from running here: no CUDA GPU, no TensorRT runtime."""
    problem = import_problem(
        "inctrl_runtime.engines.tensorrt.cuda", "inctrl_runtime.engines.tensorrt.runtimes"
    )
    if problem is not None:
        return problem
    from inctrl_runtime.engines.tensorrt.cuda import gpu_problem
    from inctrl_runtime.engines.tensorrt.runtimes import runtime_problems, tensorrt_runtimes

    found = [gpu_problem(GPU_INDEX)]
    if not tensorrt_runtimes():
        reasons = "; ".join(f"{name}: {why}" for name, why in runtime_problems().items())
        found.append(f"no TensorRT runtime ({reasons})")
    return "; ".join(p for p in found if p is not None) or None


def _problem(backend: Backend, device: str) -> str | None:
    """The missing library or hardware that keeps a backend from running on ``device``."""
    if backend.uses_torch:
        problem = import_problem("torch", "inctrl.model")
        if problem is not None or device != "cuda":
            return problem
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
        if backend.precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"this GPU ({torch.cuda.get_device_name()}) has no bf16 arithmetic"
        return None
    if backend.kind == "tensorrt":
        return _tensorrt_problem()
    problem = import_problem("onnxruntime")
    if problem is None:
        from inctrl_runtime.engines.ort import place

        try:
            place(backend.runtime_device or "cpu", strict=True)
        except InputError as err:
            problem = str(err)
    return problem


def check_runnable(backend: Backend, device: str) -> None:
    """Raise ``Unavailable`` with what keeps a backend from running here with ``--device``."""
    found = [p for p in [_problem(backend, backend.device or device)] if p is not None]
    if not found and backend.device is not None and backend.device != device:
        found.append(f"runs on {backend.device}: bench with --device {backend.device}")
    if found:
        raise Unavailable("; ".join(found))
