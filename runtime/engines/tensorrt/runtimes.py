"""Which TensorRT runtimes import here (the full ``tensorrt`` or the lean ``tensorrt_lean``), and
a started runtime that deserializes plans and keeps TensorRT's errors to quote them (torch-free).
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from inctrl_runtime.engines.tensorrt.cuda import GpuError
from inctrl_runtime.engines.tensorrt.plans import REBUILD, PlanRecord, read_plan
from inctrl_runtime.errors import BundleError

# Every TensorRT name the runner uses, by owner ("module": the tensorrt / tensorrt_lean module);
# a test checks each against the installed lean runtime, and that this module uses no other.
TRT_RUNNER_API = {
    "module": ("ILogger", "Runtime", "TensorIOMode", "__version__", "nptype"),
    "ILogger": ("ERROR", "INTERNAL_ERROR", "log"),
    "TensorIOMode": ("INPUT",),
    "Runtime": ("deserialize_cuda_engine", "engine_host_code_allowed"),
    "ICudaEngine": (
        "create_execution_context",
        "get_tensor_dtype",
        "get_tensor_mode",
        "get_tensor_name",
        "get_tensor_profile_shape",
        "get_tensor_shape",
        "num_io_tensors",
    ),
    "IExecutionContext": ("execute_async_v3", "set_input_shape", "set_tensor_address"),
}
# runtime -> the import names to try, in order (the user-facing package, then its bindings).
RUNTIME_MODULES = {
    "tensorrt": ("tensorrt", "tensorrt_bindings"),
    "tensorrt-lean": ("tensorrt_lean", "tensorrt_lean_bindings"),
}
INSTALL_TENSORRT = (
    'pip install "inctrl[tensorrt-lean]" (version-compatible plans) or "inctrl[tensorrt]" '
    "(with NVIDIA's TensorRT libraries)"
)
# Runtimes that failed to start: TensorRT 11.4 crashes the process when one is touched or freed.
_UNUSABLE: list = []


@functools.cache
def runtime_modules() -> tuple[dict[str, ModuleType], dict[str, str]]:
    """The TensorRT runtime modules that import here, and why each other one does not."""
    found: dict[str, ModuleType] = {}
    problems: dict[str, str] = {}
    for runtime, names in RUNTIME_MODULES.items():
        reasons = []
        for name in names:
            try:
                found[runtime] = importlib.import_module(name)
                break
            except (ImportError, OSError) as err:
                reasons.append(f"{name}: {str(err).strip() or type(err).__name__}")
        else:
            problems[runtime] = "; ".join(reasons)
    return found, problems


def tensorrt_runtimes() -> dict[str, str]:
    """The TensorRT runtimes that import here: ``tensorrt`` / ``tensorrt-lean`` -> version."""
    return {name: str(trt.__version__) for name, trt in runtime_modules()[0].items()}


def runtime_problems() -> dict[str, str]:
    """Why each TensorRT runtime that does not import here does not (the import errors)."""
    return dict(runtime_modules()[1])


@functools.cache
def _error_log_class(trt: ModuleType) -> type:
    class ErrorLog(trt.ILogger):
        """Keeps TensorRT's errors, so that a failure can quote them; drops the rest (the
        runtime reports what matters itself, as with onnxruntime)."""

        def __init__(self) -> None:
            super().__init__()
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.ERROR, trt.ILogger.INTERNAL_ERROR):
                self.errors.append(" ".join(str(msg).split()))

    return ErrorLog


@dataclass
class TensorrtRuntime:
    """A TensorRT runtime (full or lean) and the logger that keeps its errors; it outlives the
    engines it deserialized."""

    name: str  # tensorrt or tensorrt-lean: the engines' backend
    trt: ModuleType
    log: Any
    trt_runtime: Any

    def quote(self) -> str:
        """TensorRT's last errors, for a one-line message."""
        return "; ".join(self.log.errors[-2:]) or "TensorRT logged no error"

    @classmethod
    def start(cls, name: str, trt: ModuleType) -> TensorrtRuntime:
        """A runtime, refused in one line when TensorRT cannot start CUDA (e.g. a driver older
        than the CUDA of its wheels)."""
        log = _error_log_class(trt)()
        runtime = cls(name, trt, log, trt.Runtime(log))
        if log.errors:
            _UNUSABLE.append(runtime)
            raise GpuError(
                f"{name} {trt.__version__} cannot start on this GPU ({runtime.quote()}); the "
                "NVIDIA driver must support the CUDA of the TensorRT wheels (the -cu12 extras "
                "are for CUDA 12 drivers)"
            )
        return runtime

    def load(self, bundle: Path, plan: PlanRecord, host_code: bool) -> Any:
        """Deserialize a plan once ``read_plan`` checked its size and sha256; ``host_code``
        lets TensorRT run the lean runtime embedded in it (only ever for checked bytes)."""
        data = read_plan(bundle, plan)
        self.trt_runtime.engine_host_code_allowed = host_code
        self.log.errors.clear()
        trt_engine = self.trt_runtime.deserialize_cuda_engine(data)
        if trt_engine is None:
            raise BundleError(
                f"{bundle / plan.file}: {self.name} {self.trt.__version__} cannot deserialize "
                f"it ({self.quote()}); {REBUILD.format(bundle=bundle)}"
            )
        return trt_engine
