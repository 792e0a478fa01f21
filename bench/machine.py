"""The machine (hardware, libraries, the fp32 peak of a matrix product in the same run) and how
it is measured: staged wall-clock runs, the peak of process RSS, progress on stderr."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import os
import platform
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from inctrl_runtime.machine import cpu_model, vector_extensions

LIBRARIES = ("torch", "onnxruntime", "onnx", "numpy")
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}
# Timed runs of a measurement unless --repeats: at least 2, more while under 1 s, at most 50.
ADAPTIVE_REPEATS = (2, 50, 1.0)


def import_problem(*modules: str) -> str | None:
    """Why these modules cannot be imported here, or None if they can."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            return f"{module.split('.')[0]} is not importable ({err})"
    return None


def _gpu_names() -> list[str]:
    """GPUs nvidia-smi lists (none without one); no torch needed."""
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listing = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
        return [line.strip() for line in listing.stdout.splitlines() if line.strip()]
    return []


def cuda_gpu(index: int) -> dict[str, str] | None:
    """The name and compute capability of CUDA GPU ``index``, as the runtime's CUDA layer sees
    it (None without the CUDA bindings or without that GPU)."""
    if import_problem("inctrl_runtime.engines.tensorrt.cuda") is not None:
        return None
    from inctrl_runtime.engines.tensorrt.cuda import compute_capability, gpu_name, gpu_problem

    if gpu_problem(index) is not None:
        return None
    return {"name": gpu_name(index), "compute_capability": str(compute_capability(index))}


def machine_info(command: str) -> dict:
    """The machine record of the JSON report; library versions are read without importing."""
    installed = {dist.name.lower(): dist.version for dist in metadata.distributions()}
    versions = {"python": platform.python_version()}
    versions |= {name: installed.get(name) for name in LIBRARIES}
    versions["onnxruntime"] = versions["onnxruntime"] or installed.get("onnxruntime-gpu")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "vector_extensions": vector_extensions(),
        "gpu": _gpu_names(),
        "os": platform.platform(),
        # Other work on the machine makes timings noisy: the 1-minute load when the run began.
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


@dataclass(frozen=True)
class Peak:
    """The best fp32 matrix-product rate reached in this run, and each library's (they differ)."""

    gflops: float | None
    method: str
    rates: dict[str, float] = field(default_factory=dict)


def _onnxruntime_product(operands: dict[str, np.ndarray]) -> Callable[[], object]:
    """One MatMul node in an onnxruntime CPU session (its own GEMM, MLAS)."""
    import onnxruntime
    from onnx import TensorProto, helper

    size = len(operands["a"])
    square = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [size] * 2) for n in "abc"]
    node = helper.make_node("MatMul", ["a", "b"], ["c"])
    graph = helper.make_graph([node], "gemm", square[:2], square[2:])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return lambda: session.run(None, operands)


def _products(device: str, size: int, with_torch: bool) -> dict[str, Callable[[], object]]:
    """The fp32 GEMMs this machine can run on the device, by name."""
    products = {}
    if with_torch and import_problem("torch") is None:
        import torch

        if device == "cpu" or torch.cuda.is_available():
            a, b = (torch.randn(size, size, device=device) for _ in range(2))
            sync = torch.cuda.synchronize if device == "cuda" else lambda: None
            products["torch.matmul"] = lambda: (torch.matmul(a, b), sync())
    if device == "cpu":
        rng = np.random.default_rng(0)
        operands = {n: rng.standard_normal((size, size), dtype=np.float32) for n in "ab"}
        products["numpy matmul"] = lambda: operands["a"] @ operands["b"]
        if import_problem("onnx", "onnxruntime") is None:
            products["onnxruntime MatMul"] = _onnxruntime_product(operands)
    return products


def measure_peak(device: str, with_torch: bool, runs: int = 3) -> Peak:
    """The best rate of a square fp32 GEMM on the device over the libraries here (torch only
    ``with_torch``), each after a warm-up."""
    size = GEMM_SIZE[device]
    rates = {
        name: 2 * size**3 / min(timeit.repeat(product, number=1, repeat=runs + 1)[1:]) / 1e9
        for name, product in _products(device, size, with_torch).items()
    }
    if not rates:
        without = "" if with_torch else " without torch (used only when a torch backend runs)"
        return Peak(None, f"not measured: no library here multiplies matrices on {device}{without}")
    best = max(rates, key=rates.get)
    return Peak(rates[best], f"{best} fp32 {size}x{size}, best of {runs}", rates)


class StageClock:
    """Times the named stages of one run; ``sync`` runs before a stage's clock stops, so that
    work queued on a GPU counts in the stage that queued it. ``gpu_ms``: the run's GPU time,
    where its engines measure one."""

    def __init__(self, sync: Callable[[], object]) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}
        self.gpu_ms: float | None = None

    def __call__(self, stage: str, step: Callable, *args: Any) -> Any:
        """``step(*args)``, timed as ``stage``; its value."""
        began = time.perf_counter()
        value = step(*args)
        self.sync()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - began
        return value


@dataclass(frozen=True)
class Timing:
    """Per-run wall time of one measurement, in milliseconds, with the median of each stage
    and, where every run measured one, the median GPU time (CUDA events)."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)
    gpu_p50_ms: float | None = None

    @classmethod
    def measure(
        cls, run: Callable[[StageClock], None], repeats: int | None, sync: Callable[[], object]
    ) -> Timing:
        """One warm-up run, then ``repeats`` timed runs (None: ``ADAPTIVE_REPEATS``)."""
        run(StageClock(sync))
        fewest, most, seconds = ADAPTIVE_REPEATS if repeats is None else (repeats, repeats, 0)
        clocks: list[StageClock] = []
        deadline = time.perf_counter() + seconds
        while len(clocks) < most and (len(clocks) < fewest or time.perf_counter() < deadline):
            clocks.append(StageClock(sync))
            run(clocks[-1])
        totals = [sum(clock.seconds.values()) * 1e3 for clock in clocks]
        p50, p90, p99 = (float(np.percentile(totals, q)) for q in (50, 90, 99))
        stages = {
            stage: float(np.median([c.seconds.get(stage, 0.0) for c in clocks]) * 1e3)
            for stage in clocks[0].seconds
        }
        gpu = [clock.gpu_ms for clock in clocks]
        gpu_p50 = None if None in gpu else float(np.median(gpu))
        return cls(len(clocks), p50, p90, p99, stages, gpu_p50)


class PeakRss:
    """The peak RSS of the whole process in the block: the high-water mark (VmHWM) reset at entry
    (``since_entry``), or else the lifetime peak (getrusage), which may predate the block."""

    peak_bytes: int | None = None
    since_entry = False

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.since_entry = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self.since_entry:
            with contextlib.suppress(OSError, ValueError, IndexError, StopIteration):
                status = Path("/proc/self/status").read_text().splitlines()
                kilobytes = next(line for line in status if line.startswith("VmHWM:")).split()[1]
                self.peak_bytes = int(kilobytes) * 1024
        if self.peak_bytes is None:
            self.since_entry = False
            with contextlib.suppress(ImportError):
                import resource

                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                self.peak_bytes = peak if sys.platform == "darwin" else peak * 1024


@dataclass(frozen=True)
class Progress:
    """Where a long bench is: ``step`` (what is measured now), ``done`` (worth a line)."""

    step: Callable[[str], object] = lambda message: None
    done: Callable[[str], object] = lambda message: None
