"""``OrtEngine``: one graph on onnxruntime, with providers named explicitly and checked.

A device asks for one execution provider; if this onnxruntime cannot give it, ``place`` fails
with the reason (or, with ``strict=False``, warns loudly and runs on the CPU). The CPU provider
is listed after an accelerator only for the few nodes it has no kernel for. On a GPU, inputs
and outputs go through IO binding, so that the encoder's outputs can stay on the device and
feed the head as they are.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from inctrl_runtime.devices import parse_device
from inctrl_runtime.engines import TensorSpec
from inctrl_runtime.errors import InputError

CPU = "CPUExecutionProvider"
# device -> (the provider it needs, the package that brings it)
_DEVICE_PROVIDERS = {
    "cpu": (CPU, "inctrl[cpu]"),
    "cuda": ("CUDAExecutionProvider", "inctrl[gpu] (onnxruntime-gpu)"),
    "ort-tensorrt": ("TensorrtExecutionProvider", "inctrl[gpu] with TensorRT libraries"),
}
# onnxruntime's tensor type names -> numpy dtype names, as the manifest records them.
_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


class ProviderFallbackWarning(UserWarning):
    """A requested execution provider was not available and the CPU is used instead."""


@dataclass(frozen=True)
class Placement:
    """Where sessions run: ONNX Runtime's providers (with options) and the device id."""

    device: str  # cpu, cuda or ort-tensorrt
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
    """Resolve ``cpu``, ``cuda[:N]`` or ``ort-tensorrt[:N]`` against the providers installed."""
    name = parse_device(device, tuple(_DEVICE_PROVIDERS))
    kind, index = name.kind, name.index
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
    if kind == "ort-tensorrt":
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


def _specs(args: list) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(a.name, tuple(a.shape), _DTYPES.get(a.type, a.type)) for a in args)


class OrtEngine:
    """One ONNX graph in an ``ort.InferenceSession`` on a placement's providers."""

    def __init__(self, file: Path, session: ort.InferenceSession, placement: Placement) -> None:
        self.file = file
        self.session = session
        self.placement = placement
        self.inputs = _specs(session.get_inputs())
        self.outputs = _specs(session.get_outputs())
        self._output_names = [spec.name for spec in self.outputs]

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        placement: Placement,
        threads: int | None = None,
        strict: bool = True,
        precision: str = "fp32",
    ) -> OrtEngine:
        """A session on the placement's providers, checked: onnxruntime can drop a provider
        whose libraries fail to load, which is an error (or a loud warning) rather than a
        silent CPU run."""
        try:
            session = ort.InferenceSession(
                str(path),
                sess_options=session_options(threads, placement, precision),
                providers=placement.provider_list(),
            )
        except Exception as err:  # onnxruntime raises its own untyped errors
            text = str(err).strip()
            first_line = text.splitlines()[0] if text else type(err).__name__
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
            placement = replace(placement, device="cpu", providers=(CPU,))
        return cls(Path(path), session, placement)

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def backend(self) -> str:
        """``onnxruntime-cpu``, ``onnxruntime-cuda`` or ``onnxruntime-tensorrt``."""
        return f"onnxruntime-{self.placement.device.removeprefix('ort-')}"

    @property
    def on_gpu(self) -> bool:
        return self.placement.on_gpu

    def run(self, feeds: Mapping[str, Any], keep_on_device: bool = False) -> dict[str, Any]:
        names = self._output_names
        if not self.on_gpu:
            return dict(zip(names, self.session.run(names, dict(feeds)), strict=True))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in names:
            if keep_on_device:
                binding.bind_output(name, "cuda", self.placement.device_id)
            else:
                binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        return {n: v if keep_on_device else v.numpy() for n, v in zip(names, outputs, strict=True)}

    def upload(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        if not self.on_gpu:
            return dict(arrays)
        device_id = self.placement.device_id
        return {
            name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(a), "cuda", device_id)
            for name, a in arrays.items()
        }

    def close(self) -> None:
        self.session = None  # onnxruntime frees a session when its last reference goes

    def __repr__(self) -> str:
        return f"OrtEngine({str(self.file)!r}, providers={list(self.placement.providers)})"
