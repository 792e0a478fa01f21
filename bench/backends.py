"""The backends inctrl-bench knows, how ``--backend`` selects them, and why one cannot run here
(a backend that cannot run is reported with the reason, never silently left out)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass

from inctrl_runtime.errors import InputError

DEVICES = ("cpu", "cuda")


class Unavailable(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """One way of running InCTRL: ``authors`` and ``torch`` run the PyTorch model (on
    ``--device`` unless ``device`` is set), ``onnxruntime`` and ``tensorrt`` a bundle through
    ``inctrl_runtime.Detector`` on ``runtime_device``. ``precision`` is the encoder's."""

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
    # onnxruntime's TensorRT execution provider, the runtime's way to TensorRT for now.
    Backend("tensorrt", "tensorrt", "fp32", "cuda", "tensorrt"),
)
BY_NAME = {backend.name: backend for backend in CATALOGUE}


def select_backends(patterns: Sequence[str]) -> list[Backend]:
    """The backends named by exact name or prefix (``onnxruntime`` selects all its variants),
    in catalogue order; all of them when no pattern is given."""
    if not patterns:
        return list(CATALOGUE)
    chosen = set()
    for pattern in patterns:
        matches = {b.name for b in CATALOGUE if b.name.startswith(pattern)}
        if not pattern or not matches:
            raise InputError(
                f"unknown backend {pattern!r}; choose from {', '.join(BY_NAME)} (a prefix such "
                "as onnxruntime selects every variant)"
            )
        chosen |= matches
    return [b for b in CATALOGUE if b.name in chosen]


def check_device(device: str) -> str:
    if device not in DEVICES:
        raise InputError(f"unknown device {device!r}; use cpu or cuda")
    return device


def import_problem(*modules: str) -> str | None:
    """Why these modules cannot be imported here, or None if they can."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            return f"{module.split('.')[0]} is not importable ({err})"
    return None


def _torch_problem(backend: Backend, device: str) -> str | None:
    problem = import_problem("torch", "inctrl.model")
    if problem is not None or device != "cuda":
        return problem
    import torch

    if not torch.cuda.is_available():
        return "torch sees no CUDA GPU"
    if backend.precision == "bf16" and not torch.cuda.is_bf16_supported():
        return f"this GPU ({torch.cuda.get_device_name()}) has no bf16 arithmetic"
    return None


def _runtime_problems(backend: Backend) -> list[str]:
    found = [import_problem("tensorrt")] if backend.kind == "tensorrt" else []
    found.append(import_problem("onnxruntime"))
    if found[-1] is None:
        from inctrl_runtime.engines.ort import place

        try:
            place(backend.runtime_device or "cpu", strict=True)
        except InputError as err:
            found.append(str(err))
    return [problem for problem in found if problem is not None]


def problems(backend: Backend, device: str) -> list[str]:
    """What keeps a backend from running here with ``--device device``: missing libraries or
    hardware first, then a device other than the backend's."""
    if backend.uses_torch:
        found = [p for p in [_torch_problem(backend, backend.device or device)] if p is not None]
    else:
        found = _runtime_problems(backend)
    if not found and backend.device is not None and backend.device != device:
        found.append(f"runs on {backend.device}: bench with --device {backend.device}")
    return found
