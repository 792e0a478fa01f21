"""``TrtEngine``: one graph of a bundle as a native TensorRT plan, run through TensorRT's
name-based API on its own CUDA stream (torch-free; the full ``tensorrt`` runtime or the lean
``tensorrt_lean`` one, which runs version-compatible plans).

    engines = open_trt_engines(bundle, "tensorrt:0")            # {"encoder": ..., "head": ...}
    features = engines["encoder"].run({"image": pixels}, keep_on_device=True)  # DeviceTensors
    bank = engines["head"].upload({"ref_patches": ..., "ref_adapted": ..., "text_prior": ...})
    scores = engines["head"].run({**features, **bank})            # numpy arrays

Opening follows one order, so that a refusal names the first thing wrong: the device name, the
bundle's builds, the GPU, the TensorRT runtimes installed, the build this GPU and runtime can run
(``plans.choose_build``), each plan's size and sha256 (before TensorRT, which may load host code
from a plan, reads it), the deserialization (TensorRT's own error quoted) and the signature
against the manifest. A run copies host inputs into buffers sized once for the profile's largest
batch, binds device inputs where they lie (the encoder's outputs feed the head with no copy),
and runs a batch above the profile's largest in profile-sized chunks into the same buffers.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from inctrl_runtime.devices import parse_device
from inctrl_runtime.engines import VerificationWarning, check_signature
from inctrl_runtime.engines.cuda import (
    Event,
    GpuError,
    Stream,
    compute_capability,
    copy_to_device,
    copy_to_host,
    gpu_problem,
    use_device,
)
from inctrl_runtime.engines.plans import (
    Build,
    PlanRecord,
    choose_build,
    read_builds,
    read_plan,
    require_builds,
)
from inctrl_runtime.engines.trt_buffers import BatchBuffers, DeviceTensor, chunks, upload_array
from inctrl_runtime.engines.trt_io import REBUILD, PlanIO, read_bindings
from inctrl_runtime.errors import BundleError, InputError

if TYPE_CHECKING:
    from inctrl_runtime.bundle import Bundle

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
INSTALL = (
    'pip install "inctrl[tensorrt-lean]" (version-compatible plans) or "inctrl[tensorrt]" '
    "(with NVIDIA's TensorRT libraries)"
)
# Runtimes that failed to start: TensorRT 11.4 crashes the process when one is touched or freed.
_UNUSABLE: list = []


@functools.cache
def _runtime_modules() -> tuple[dict[str, ModuleType], dict[str, str]]:
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
    return {name: str(trt.__version__) for name, trt in _runtime_modules()[0].items()}


def runtime_problems() -> dict[str, str]:
    """Why each TensorRT runtime that does not import here does not (the import errors)."""
    return dict(_runtime_modules()[1])


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
class _Runtime:
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
    def start(cls, name: str, trt: ModuleType) -> _Runtime:
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


class TrtEngine:
    """One plan on GPU ``device_index``: an ``Engine`` (``inctrl_runtime.engines``) whose device
    values are ``DeviceTensor``s. ``gpu_ms`` is the GPU time of the last run (CUDA events)."""

    device = "tensorrt"
    on_gpu = True

    def __init__(
        self, bundle: Path, build: Build, graph: str, runtime: _Runtime, device_index: int
    ) -> None:
        self.bundle, self.build, self.plan = bundle, build, build.plans[graph]
        self.file = bundle / self.plan.file
        self.device_index = device_index
        self._runtime = runtime  # TensorRT frees an engine before the runtime that made it
        self._trt_engine = runtime.load(bundle, self.plan, build.lean_runtime_embedded)
        bindings = read_bindings(runtime.trt, self._trt_engine, self.file)
        self.io = PlanIO(bindings, self.file, bundle, build.shots)
        self.inputs, self.outputs = self.io.inputs, self.io.outputs
        self._trt_context = self._trt_engine.create_execution_context()
        if self._trt_context is None:
            raise GpuError(f"{self.file}: TensorRT made no context ({runtime.quote()})")
        self.stream = Stream()
        self._start, self._end, self._done = Event(), Event(), Event(timing=False)
        sizes = {b.spec.name: b.row_bytes for b in bindings.values() if b.batched}
        self._buffers = BatchBuffers(sizes, self.io.batch[2])
        self.generation = 0  # of the outputs in the buffers
        self.closed = False
        self._timed = False
        self._readers: dict[int, Event] = {}  # engines reading our outputs: their done events

    @property
    def backend(self) -> str:
        """``tensorrt`` or ``tensorrt-lean``: the TensorRT runtime that runs the plan."""
        return self._runtime.name

    @property
    def batch_range(self) -> tuple[int, int]:
        """The smallest and largest batch of the plan's profile (larger ones run in chunks)."""
        return self.io.batch[0], self.io.batch[2]

    @property
    def gpu_ms(self) -> float | None:
        """GPU milliseconds of the last run's TensorRT work (every chunk, not the host copies;
        waits for it to finish); None before the first run."""
        return self._end.elapsed_ms(self._start) if self._timed and not self.closed else None

    def run(self, feeds: Mapping[str, Any], keep_on_device: bool = False) -> dict[str, Any]:
        """Every output by name for host arrays or ``DeviceTensor``s: numpy arrays, or
        ``DeviceTensor``s in this engine's buffers (valid until its next run) when
        ``keep_on_device``."""
        self._check_open()
        batch, values = self.io.check_feeds(feeds, self.device_index)
        use_device(self.device_index)
        self._claim_buffers(batch)
        addresses, staged = {}, []
        for spec in self.inputs:
            value = values[spec.name]
            if isinstance(value, DeviceTensor):
                self._read_from(value)
                addresses[spec.name] = value.ptr
            elif self.io.bindings[spec.name].batched:
                addresses[spec.name] = self._buffers.ptr(spec.name)
                copy_to_device(addresses[spec.name], value, self.stream)
            else:  # a bank input given as a host array: on the device for this run only
                staged.append(upload_array(value, self, self.stream))
                addresses[spec.name] = staged[-1].ptr
        self._start.record(self.stream)
        for first, rows in chunks(batch, self.io.batch[0], self.io.batch[2], self._buffers.step):
            self._enqueue(values, addresses, first, rows)
        self._end.record(self.stream)
        self._done.record(self.stream)
        self._timed = True
        shapes = {spec: (batch, *spec.shape[1:]) for spec in self.outputs}
        if keep_on_device:
            if staged:
                self.stream.synchronize()  # before the staged inputs are freed
            run, done = self.generation, self._done
            return {
                s.name: DeviceTensor(self._buffers.ptr(s.name), shape, s.dtype, self, run, done)
                for s, shape in shapes.items()
            }
        found = {spec.name: np.empty(shape, spec.dtype) for spec, shape in shapes.items()}
        for name, array in found.items():
            copy_to_host(array, self._buffers.ptr(name), self.stream)
        self.stream.synchronize()
        return found

    def upload(self, arrays: Mapping[str, Any]) -> dict[str, DeviceTensor]:
        """Inputs (the bank and prior) copied to the GPU once, each into its own allocation,
        freed when its ``DeviceTensor`` is collected; checked against the plan's profile."""
        self._check_open()
        use_device(self.device_index)
        checked = {name: self.io.host_array(name, array) for name, array in arrays.items()}
        found = {name: upload_array(a, self, self.stream) for name, a in checked.items()}
        self.stream.synchronize()
        return found

    def close(self) -> None:
        """Free the buffers, the execution context, the engine and the stream (idempotent)."""
        if self.closed:
            return
        use_device(self.device_index)
        self._quiesce()
        self._buffers.free()
        self._trt_context = None  # in the reverse order of creation, as TensorRT requires
        self._trt_engine = None
        self.closed = True
        for event in (self._start, self._end, self._done):
            event.close()
        self.stream.close()

    # ------------------------------------------------------------------------------ internals
    def _check_open(self) -> None:
        if self.closed:
            raise InputError(f"{self.file}: this engine is closed")

    def _claim_buffers(self, batch: int) -> None:
        """Make the buffers ours for a new run: later work on our stream waits for the engines
        still reading our last outputs, and the buffers grow (idle first) for a larger batch."""
        if batch > self._buffers.rows:
            self._quiesce()
            self._buffers.grow(batch)
        for event in self._readers.values():
            self.stream.wait(event)
        self._readers.clear()
        self.generation += 1

    def _quiesce(self) -> None:
        for event in self._readers.values():
            event.synchronize()
        self.stream.synchronize()

    def _read_from(self, value: DeviceTensor) -> None:
        """Order our stream after the run that wrote ``value``, and its engine's next run
        after ours."""
        producer = value.engine
        if producer is self:
            return
        if value.event is not None:
            self.stream.wait(value.event)
        if value.generation is not None:
            producer._readers[id(self)] = self._done

    def _enqueue(self, values: dict, addresses: dict, first: int, rows: int) -> None:
        """Queue the plan on rows ``first``..``first + rows`` of the batched tensors."""
        trt_context = self._trt_context
        for spec in self.inputs:
            binding, shape = self.io.bindings[spec.name], tuple(values[spec.name].shape)
            address = addresses[spec.name]
            if binding.batched:
                shape, address = (rows, *shape[1:]), address + first * binding.row_bytes
                address = self._buffers.bind_input(spec.name, address, rows, self.stream)
            shaped = binding.profile is None or trt_context.set_input_shape(spec.name, shape)
            if not (shaped and trt_context.set_tensor_address(spec.name, address)):
                raise GpuError(
                    f"{self.file}: TensorRT refused {spec.name} of shape {list(shape)} "
                    f"({self._runtime.quote()})"
                )
        for spec in self.outputs:
            address = self._buffers.bind_output(spec.name, first, rows)
            if not trt_context.set_tensor_address(spec.name, address):
                raise GpuError(f"{self.file}: TensorRT refused {spec.name}'s buffer")
        if not trt_context.execute_async_v3(self.stream.handle):
            raise GpuError(f"{self.file}: TensorRT could not run it ({self._runtime.quote()})")
        self._buffers.settle(self.stream)

    def __repr__(self) -> str:
        return f"TrtEngine({str(self.file)!r}, {self.backend}, GPU {self.device_index})"


def open_trt_engines(
    bundle: Bundle, device: str = "tensorrt", build: Build | str | None = None
) -> dict[str, TrtEngine]:
    """The bundle's encoder and head as TensorRT engines on ``device`` (``tensorrt[:N]``), each
    checked against the manifest. ``build`` picks one build by key, or gives one not yet in the
    manifest (the export's self-check); by default the one this GPU and TensorRT can run."""
    from inctrl_runtime.bundle import GRAPHS, MANIFEST

    index = parse_device(device, ("tensorrt",)).index or 0
    if isinstance(build, Build):
        builds, key = {build.key: build}, None
    else:
        builds, key = read_builds(bundle.manifest, bundle.path / MANIFEST), build
    require_builds(builds, bundle.path)
    problem = gpu_problem(index)
    if problem:
        raise InputError(
            f"device {device!r}: {problem}; TensorRT plans run on an NVIDIA GPU with its driver "
            "(or use --device cpu)"
        )
    modules, problems = _runtime_modules()
    if not modules:
        reasons = "; ".join(problems.values())
        raise InputError(f"device {device!r}: no TensorRT runtime imports ({reasons}); {INSTALL}")
    precision, capability = bundle.graphs["encoder"].precision, compute_capability(index)
    chosen, runtime_name = choose_build(
        builds, bundle.path, precision, capability, tensorrt_runtimes(), key
    )
    missing = [graph for graph in GRAPHS if graph not in chosen.plans]
    if missing:
        raise BundleError(
            f"{bundle.path / MANIFEST}: build {chosen.key} records no {' or '.join(missing)} "
            f"plan; {REBUILD.format(bundle=bundle.path)}"
        )
    _warn_if_unverified(bundle.path, chosen)
    use_device(index)  # TensorRT deserializes onto the current GPU
    runtime = _Runtime.start(runtime_name, modules[runtime_name])
    engines: dict[str, TrtEngine] = {}
    try:
        for graph in GRAPHS:
            engines[graph] = TrtEngine(bundle.path, chosen, graph, runtime, index)
            recorded = replace(bundle.graphs[graph], file=engines[graph].file)
            check_signature(engines[graph], recorded, REBUILD.format(bundle=bundle.path))
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines


def _warn_if_unverified(bundle: Path, build: Build) -> None:
    check = build.verification or {}
    if check and not check.get("passed", False):
        warnings.warn(
            f"{bundle}: the TensorRT build {build.key} failed its check against PyTorch (max abs "
            f"diff {check.get('max_abs_diff')}); see its manifest",
            VerificationWarning,
            stacklevel=5,  # Detector.open's caller
        )
