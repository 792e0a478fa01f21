"""The CUDA runtime for native TensorRT engines, through NVIDIA's ``cuda.bindings`` (12.x or 13.x):
which GPUs there are, device memory, streams, events and copies. Torch-free.

Every ``cuda.bindings`` call returns a tuple ``(error, *values)`` and raises nothing; ``_call``
turns an error code into a one-line ``GpuError`` that names the call and CUDA's own words. Device
memory, streams and events are freed by ``free``/``close`` or, failing that, when collected.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from types import ModuleType

import numpy as np

from inctrl_runtime.errors import InputError

INSTALL_CUDA_BINDINGS = (
    'pip install "inctrl[tensorrt-lean]" (or "inctrl[tensorrt-lean-cu12]" on CUDA 12)'
)
# Every name of cuda.bindings.runtime used here, dotted for members (a test checks each exists in
# the installed bindings, 12.x and 13.x alike, and that this module uses no other).
CUDA_API = (
    "cudaDeviceAttr",
    "cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor",
    "cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor",
    "cudaDeviceGetAttribute",
    "cudaDeviceProp.name",
    "cudaDriverGetVersion",
    "cudaError_t",
    "cudaError_t.cudaSuccess",
    "cudaEventCreateWithFlags",
    "cudaEventDefault",
    "cudaEventDestroy",
    "cudaEventDisableTiming",
    "cudaEventElapsedTime",
    "cudaEventRecord",
    "cudaEventSynchronize",
    "cudaFree",
    "cudaGetDeviceCount",
    "cudaGetDeviceProperties",
    "cudaGetErrorName",
    "cudaGetErrorString",
    "cudaMalloc",
    "cudaMemcpyAsync",
    "cudaMemcpyKind",
    "cudaMemcpyKind.cudaMemcpyDeviceToDevice",
    "cudaMemcpyKind.cudaMemcpyDeviceToHost",
    "cudaMemcpyKind.cudaMemcpyHostToDevice",
    "cudaSetDevice",
    "cudaStreamCreateWithFlags",
    "cudaStreamDestroy",
    "cudaStreamNonBlocking",
    "cudaStreamSynchronize",
    "cudaStreamWaitEvent",
)


@dataclass(frozen=True)
class ComputeCapability:
    """A GPU's compute capability, e.g. 8.9 (``sm89`` in a plan's name)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> ComputeCapability:
        major, _, minor = str(text).partition(".")
        if not (major.isdigit() and minor.isdigit()):
            raise ValueError(f"compute capability {text!r} is not MAJOR.MINOR")
        return cls(int(major), int(minor))

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def sm(self) -> str:
        return f"sm{self.major}{self.minor}"


class GpuError(InputError):
    """A CUDA or TensorRT call failed on this machine (driver, memory, a plan that does not fit
    the GPU): printed in one line, like a user mistake, with the backend's own words."""


@functools.cache
def cuda_runtime() -> ModuleType:
    """``cuda.bindings.runtime``, or a one-line error saying what to install."""
    try:
        from cuda.bindings import runtime
    except ImportError as err:
        raise InputError(
            f"the CUDA bindings are not installed ({err}); {INSTALL_CUDA_BINDINGS}"
        ) from None
    return runtime


def _error_text(error: object) -> str:
    cudart = cuda_runtime()
    name = cudart.cudaGetErrorName(error)[1]
    text = cudart.cudaGetErrorString(error)[1]
    return f"{_decode(name)}: {_decode(text)}"


def _decode(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _call(name: str, *args: object) -> object:
    """``cuda.bindings.runtime.<name>(*args)``: its value(s) (None, one value, or a tuple), or a
    ``GpuError`` naming the call and CUDA's words for the error code."""
    cudart = cuda_runtime()
    error, *values = getattr(cudart, name)(*args)
    if error != cudart.cudaError_t.cudaSuccess:
        raise GpuError(f"CUDA {name} failed ({_error_text(error)})")
    return None if not values else values[0] if len(values) == 1 else tuple(values)


def gpu_problem(index: int = 0) -> str | None:
    """None when CUDA GPU ``index`` is usable here; else why not, in words (no bindings, no
    driver, no GPU, too few GPUs)."""
    try:
        cudart = cuda_runtime()
    except InputError as err:
        return str(err)
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        driver = cudart.cudaDriverGetVersion()[1] or 0
        found = f"driver CUDA {driver // 1000}.{driver % 1000 // 10}" if driver else "no driver"
        return f"no usable CUDA GPU (cudaGetDeviceCount: {_error_text(error)}; {found})"
    if count == 0:
        return "no CUDA GPU on this machine"
    if index >= count:
        return f"GPU {index} requested, this machine has {count}"
    return None


def use_device(index: int) -> None:
    """Make GPU ``index`` current for this thread's CUDA calls."""
    _call("cudaSetDevice", index)


def compute_capability(index: int = 0) -> ComputeCapability:
    """GPU ``index``'s compute capability (a plan runs only on the one it was built for)."""
    cudart = cuda_runtime()
    major, minor = (
        int(_call("cudaDeviceGetAttribute", attribute, index))
        for attribute in (
            cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor,
            cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor,
        )
    )
    return ComputeCapability(major, minor)


def gpu_name(index: int = 0) -> str:
    """GPU ``index``'s name, e.g. ``NVIDIA L4``."""
    properties = _call("cudaGetDeviceProperties", index)
    return _decode(properties.name).rstrip("\x00").strip()


def _free(pointer: int) -> None:
    cuda_runtime().cudaFree(pointer)  # at collection: nowhere to report an error


class DeviceMemory:
    """``nbytes`` of memory on the current GPU (``cudaMalloc``), freed by ``free()`` or when the
    object is collected."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = int(nbytes)
        self.ptr = int(_call("cudaMalloc", max(self.nbytes, 1)))
        self._finalizer = weakref.finalize(self, _free, self.ptr)
        self._finalizer.atexit = False  # the driver frees everything when the process ends

    def free(self) -> None:
        self._finalizer()

    def __repr__(self) -> str:
        return f"DeviceMemory({self.nbytes} bytes at {self.ptr:#x})"


class Stream:
    """A non-blocking CUDA stream (it never waits for the legacy default stream)."""

    def __init__(self) -> None:
        cudart = cuda_runtime()
        self.raw = _call("cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking)
        self.handle = int(self.raw)  # what TensorRT's execute_async_v3 takes
        self._finalizer = weakref.finalize(self, cudart.cudaStreamDestroy, self.raw)
        self._finalizer.atexit = False

    def synchronize(self) -> None:
        _call("cudaStreamSynchronize", self.raw)

    def wait(self, event: Event) -> None:
        """Work queued on this stream after this call waits for ``event`` (no host wait)."""
        _call("cudaStreamWaitEvent", self.raw, event.raw, 0)

    def close(self) -> None:
        self._finalizer()


class Event:
    """A CUDA event; ``timing=False`` makes a cheaper one that only orders work."""

    def __init__(self, timing: bool = True) -> None:
        cudart = cuda_runtime()
        flags = cudart.cudaEventDefault if timing else cudart.cudaEventDisableTiming
        self.raw = _call("cudaEventCreateWithFlags", flags)
        self._finalizer = weakref.finalize(self, cudart.cudaEventDestroy, self.raw)
        self._finalizer.atexit = False

    def record(self, stream: Stream) -> None:
        _call("cudaEventRecord", self.raw, stream.raw)

    def synchronize(self) -> None:
        _call("cudaEventSynchronize", self.raw)

    def elapsed_ms(self, since: Event) -> float:
        """Milliseconds of GPU time from ``since`` to this event (waits for this one)."""
        self.synchronize()
        return float(_call("cudaEventElapsedTime", since.raw, self.raw))

    def close(self) -> None:
        self._finalizer()


def copy_to_device(pointer: int, array: np.ndarray, stream: Stream) -> None:
    """Queue a copy of a C-contiguous host array to device memory at ``pointer``. The host array
    may change once this returns (CUDA stages copies from pageable memory)."""
    kind = cuda_runtime().cudaMemcpyKind.cudaMemcpyHostToDevice
    _call("cudaMemcpyAsync", pointer, array.ctypes.data, array.nbytes, kind, stream.raw)


def copy_to_host(array: np.ndarray, pointer: int, stream: Stream) -> None:
    """Queue a copy of device memory at ``pointer`` into a C-contiguous host array; it is
    complete once the stream is synchronized."""
    kind = cuda_runtime().cudaMemcpyKind.cudaMemcpyDeviceToHost
    _call("cudaMemcpyAsync", array.ctypes.data, pointer, array.nbytes, kind, stream.raw)


def copy_on_device(target: int, source: int, nbytes: int, stream: Stream) -> None:
    """Queue a copy of ``nbytes`` between two device addresses (any alignment)."""
    kind = cuda_runtime().cudaMemcpyKind.cudaMemcpyDeviceToDevice
    _call("cudaMemcpyAsync", target, source, nbytes, kind, stream.raw)
