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

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inctrl_runtime.contract import GRAPHS
from inctrl_runtime.devices import parse_device
from inctrl_runtime.engines import check_signature
from inctrl_runtime.engines.tensorrt.buffers import (
    BatchBuffers,
    DeviceTensor,
    chunks,
    upload_array,
)
from inctrl_runtime.engines.tensorrt.cuda import (
    Event,
    GpuError,
    Stream,
    compute_capability,
    copy_to_device,
    copy_to_host,
    gpu_problem,
    use_device,
)
from inctrl_runtime.engines.tensorrt.plan_io import PlanIO, read_bindings
from inctrl_runtime.engines.tensorrt.plans import REBUILD, Build, choose_build, require_builds
from inctrl_runtime.engines.tensorrt.runtimes import (
    INSTALL_TENSORRT,
    TensorrtRuntime,
    runtime_modules,
    tensorrt_runtimes,
)
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.manifest import MANIFEST

if TYPE_CHECKING:
    from inctrl_runtime.bundle import Bundle


class TrtEngine:
    """One plan on GPU ``device_index``: an ``Engine`` (``inctrl_runtime.engines``) whose device
    values are ``DeviceTensor``s. ``gpu_ms`` is the GPU time of the last run (CUDA events)."""

    device = "tensorrt"
    on_gpu = True

    def __init__(
        self, bundle: Path, build: Build, graph: str, runtime: TensorrtRuntime, device_index: int
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
    manifest (the export's self-check); by default the one this GPU and TensorRT can run. A
    build whose own check failed is warned about (``ExportCheck.warn_if_failed``)."""
    index = parse_device(device, ("tensorrt",)).index or 0
    if isinstance(build, Build):
        builds, key = {build.key: build}, None
    else:
        builds, key = bundle.builds, build
    require_builds(builds, bundle.path)
    problem = gpu_problem(index)
    if problem:
        raise InputError(
            f"device {device!r}: {problem}; TensorRT plans run on an NVIDIA GPU with its driver "
            "(or use --device cpu)"
        )
    modules, problems = runtime_modules()
    if not modules:
        reasons = "; ".join(problems.values())
        raise InputError(
            f"device {device!r}: no TensorRT runtime imports ({reasons}); {INSTALL_TENSORRT}"
        )
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
    if chosen.check is not None:
        what = f"{bundle.path}: the TensorRT build {chosen.key}"
        chosen.check.warn_if_failed(what, stacklevel=5)  # Detector.open's caller
    use_device(index)  # TensorRT deserializes onto the current GPU
    runtime = TensorrtRuntime.start(runtime_name, modules[runtime_name])
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
