"""What the numbers were measured on: the machine, the libraries, and its fp32 peak measured
in the same run by a large matrix product."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from importlib import metadata

import numpy as np

from inctrl_bench.backends import import_problem

LIBRARIES = ("torch", "onnxruntime", "onnx", "numpy")
GEMM_SIZE = {"cpu": 2048, "cuda": 8192}


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as handle:
        for line in handle:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """GPUs nvidia-smi lists (empty without one); no torch needed."""
    command = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    try:
        listing = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in listing.stdout.splitlines() if line.strip()]


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info(command: str) -> dict:
    """The machine record of the JSON report; library versions are read without importing."""
    versions = {"python": platform.python_version()}
    versions.update({name: _version(name) for name in LIBRARIES})
    versions["onnxruntime"] = versions["onnxruntime"] or _version("onnxruntime-gpu")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "gpu": gpu_names(),
        "os": platform.platform(),
        # Other work on the machine makes timings noisy: the 1-minute load when the run began.
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "versions": versions,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
    }


@dataclass(frozen=True)
class Peak:
    """The best fp32 matrix-product rate this machine reached in this run, and each library's
    (libraries differ: MKL, for one, is slow on AMD CPUs)."""

    gflops: float | None
    method: str
    rates: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _best_seconds(product: Callable[[], object], runs: int) -> float:
    product()  # warm-up
    best = float("inf")
    for _ in range(runs):
        began = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - began)
    return best


def _torch_product(device: str, size: int) -> Callable[[], object]:
    import torch

    a, b = (torch.randn(size, size, device=device) for _ in range(2))
    if device == "cpu":
        return lambda: torch.matmul(a, b)
    return lambda: (torch.matmul(a, b), torch.cuda.synchronize())


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
            products["torch.matmul"] = _torch_product(device, size)
    if device == "cpu":
        rng = np.random.default_rng(0)
        operands = {n: rng.standard_normal((size, size), dtype=np.float32) for n in "ab"}
        products["numpy matmul"] = lambda: operands["a"] @ operands["b"]
        if import_problem("onnx", "onnxruntime") is None:
            products["onnxruntime MatMul"] = _onnxruntime_product(operands)
    return products


def measure_peak(device: str, with_torch: bool, runs: int = 3) -> Peak:
    """The best rate of a square fp32 GEMM on the device over the libraries here (numpy,
    onnxruntime and, ``with_torch``, torch on a CPU; torch on a GPU)."""
    size = GEMM_SIZE[device]
    rates = {
        name: 2 * size**3 / _best_seconds(product, runs) / 1e9
        for name, product in _products(device, size, with_torch).items()
    }
    if not rates:
        without = "" if with_torch else " without torch (used only when a torch backend runs)"
        return Peak(None, f"not measured: no library here multiplies matrices on {device}{without}")
    best = max(rates, key=rates.get)
    return Peak(rates[best], f"{best} fp32 {size}x{size}, best of {runs}", rates)
