"""ONNX Runtime sessions: providers named explicitly, checked, and set up in one place.

A device asks for one execution provider; if this onnxruntime cannot give it, ``open_session``
fails with the reason (or, with ``strict=False``, warns loudly and runs on the CPU). The CPU
provider is listed after an accelerator only for the few nodes it has no kernel for.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import onnxruntime as ort

from inctrl_runtime.errors import InputError

CPU = "CPUExecutionProvider"
# device -> (the provider it needs, the package that brings it)
_DEVICE_PROVIDERS = {
    "cpu": (CPU, "inctrl[cpu]"),
    "cuda": ("CUDAExecutionProvider", "inctrl[gpu] (onnxruntime-gpu)"),
    "tensorrt": ("TensorrtExecutionProvider", "inctrl[gpu] with TensorRT libraries"),
}


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider was not available and the CPU is used instead."""


@dataclass(frozen=True)
class Placement:
    """Where sessions run: ONNX Runtime's providers (with options) and the device id."""

    device: str  # cpu, cuda or tensorrt
    device_id: int
    providers: tuple[str, ...]

    @property
    def on_gpu(self) -> bool:
        return self.device != "cpu"

    def provider_list(self) -> list:
        """Providers with their options, as ``InferenceSession`` takes them."""
        options = {"device_id": self.device_id}
        return [(p, {} if p == CPU else options) for p in self.providers]


def place(device: str = "cpu", strict: bool = True) -> Placement:
    """Resolve ``cpu``, ``cuda[:N]`` or ``tensorrt[:N]`` against the providers installed."""
    kind, _, index = device.partition(":")
    if kind not in _DEVICE_PROVIDERS or (index and not index.isdigit()):
        raise InputError(f"unknown device {device!r}; use cpu, cuda, cuda:N or tensorrt")
    wanted, package = _DEVICE_PROVIDERS[kind]
    available = ort.get_available_providers()
    if wanted not in available:
        message = (
            f"device {device!r} needs onnxruntime's {wanted}, which this onnxruntime "
            f"({ort.__version__}) lacks (it has {', '.join(available)}); install {package}"
        )
        if strict:
            raise InputError(message + " or use --device cpu")
        warnings.warn(message + "; running on the CPU instead", ProviderFallbackWarning, 2)
        kind = "cpu"
    providers = (wanted, CPU) if kind != "cpu" else (CPU,)
    if kind == "tensorrt":
        providers = (wanted, "CUDAExecutionProvider", CPU)
    return Placement(kind, int(index or 0), providers)


def session_options(
    threads: int | None = None, placement: Placement | None = None, precision: str = "fp32"
) -> ort.SessionOptions:
    """Full graph optimization; ``threads`` intra-op threads (None: ONNX Runtime's default)."""
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if precision == "fp16" and (placement is None or not placement.on_gpu):
        # onnxruntime's CPU layout optimizations (the only extra of ENABLE_ALL) crash the
        # process on fp16 graphs (seen with onnxruntime 1.32); extended fusions still apply.
        level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.graph_optimization_level = level
    if threads is not None:
        if threads < 1:
            raise InputError(f"threads must be at least 1, got {threads}")
        options.intra_op_num_threads = threads
    options.log_severity_level = 3  # errors only: the runtime reports fallbacks itself
    return options


def open_session(
    path: str | os.PathLike,
    placement: Placement,
    threads: int | None = None,
    strict: bool = True,
    precision: str = "fp32",
) -> ort.InferenceSession:
    """A session on the placement's providers, checked: onnxruntime can drop a provider whose
    libraries fail to load, which is an error (or a loud warning) rather than a silent CPU run."""
    try:
        session = ort.InferenceSession(
            str(path),
            sess_options=session_options(threads, placement, precision),
            providers=placement.provider_list(),
        )
    except Exception as err:  # onnxruntime raises its own untyped errors
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: onnxruntime cannot load it ({first_line})") from None
    active = session.get_providers()
    if placement.providers[0] not in active:
        message = (
            f"{path}: onnxruntime did not start {placement.providers[0]} (active: "
            f"{', '.join(active)}); check the CUDA/TensorRT libraries"
        )
        if strict:
            raise InputError(message)
        warnings.warn(message + "; running on the CPU instead", ProviderFallbackWarning, 2)
    return session
