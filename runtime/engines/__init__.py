"""The runtime's one backend seam: an ``Engine`` runs one graph of a bundle.

An engine has an input and an output signature (``TensorSpec`` each) and ``run(feeds,
keep_on_device)``; ``Detector`` composes an encoder engine and a head engine and knows no backend
API. ``open_engines`` picks the engine class from the device, and every engine it opens is
checked against the manifest's record of its graph before it is used, so that a graph that does
not match its manifest is refused in one line instead of failing inside the backend.

Backends: ``OrtEngine`` (onnxruntime, any execution provider; ``inctrl_runtime.engines.ort``)
and ``TrtEngine`` (a native TensorRT plan on the full or the lean TensorRT runtime; the package
``inctrl_runtime.engines.tensorrt``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from inctrl_runtime.errors import BundleError, InputError

if TYPE_CHECKING:
    from inctrl_runtime.bundle import Bundle, GraphInfo
    from inctrl_runtime.engines.tensorrt.plans import Build

REEXPORT = "re-export it with inctrl-export onnx"


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: its shape (a string is a dynamic axis) and numpy dtype name."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.name} {self.dtype}[{dims}]"


class Engine(Protocol):
    """One graph, loaded on a backend.

    ``run`` takes host arrays or this engine's device values (from ``upload`` or an earlier
    ``run(..., keep_on_device=True)``) and returns every output by name: numpy arrays, or
    device values when ``keep_on_device`` and the engine runs on a GPU.
    """

    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def device(self) -> str:
        """The device it runs on (``cpu`` after a fallback from a missing provider)."""
        ...

    @property
    def backend(self) -> str:
        """What runs the graph, and where: e.g. ``onnxruntime-cpu`` (recorded with a
        calibration, so that scores from another backend are flagged)."""
        ...

    @property
    def on_gpu(self) -> bool: ...

    def run(self, feeds: Mapping[str, Any], keep_on_device: bool = False) -> dict[str, Any]: ...

    def upload(self, arrays: Mapping[str, Any]) -> dict[str, Any]:
        """Arrays as this engine's inputs: copied to the device once on a GPU, as they are on
        the CPU."""
        ...

    def close(self) -> None: ...


def check_signature(engine: Engine, graph: GraphInfo, remedy: str = REEXPORT) -> None:
    """Refuse, in one line naming the file and ending in ``remedy``, an engine whose inputs or
    outputs differ from the manifest's record of its graph: names, ranks, dtypes, and every
    fixed dimension."""
    for kind, found, recorded in (
        ("inputs", engine.inputs, graph.inputs),
        ("outputs", engine.outputs, graph.outputs),
    ):
        difference = signature_difference(found, recorded)
        if difference:
            raise BundleError(
                f"{graph.file}: its {kind} differ from the manifest's record ({difference}); "
                f"{remedy}"
            )


def signature_difference(found: tuple[TensorSpec, ...], wanted: tuple[TensorSpec, ...]) -> str:
    """What differs between two signatures, in words ("" when they agree)."""
    have = {spec.name: spec for spec in found}
    want = {spec.name: spec for spec in wanted}
    if set(have) != set(want):
        missing = ", ".join(sorted(set(want) - set(have))) or "none"
        extra = ", ".join(sorted(set(have) - set(want))) or "none"
        return f"missing: {missing}; unexpected: {extra}"
    for name, spec in want.items():
        other = have[name]
        if other.dtype != spec.dtype:
            return f"{name} is {other.dtype}, expected {spec.dtype}"
        if len(other.shape) != len(spec.shape):
            return f"{name} has rank {len(other.shape)}, expected {len(spec.shape)}"
        for axis, (a, b) in enumerate(zip(other.shape, spec.shape, strict=True)):
            if isinstance(a, int) and isinstance(b, int) and a != b:
                return f"{name} has {a} on axis {axis}, expected {b}"
    return ""


def open_engines(
    bundle: Bundle,
    device: str = "cpu",
    threads: int | None = None,
    strict: bool = True,
    build: Build | str | None = None,
) -> dict[str, Engine]:
    """Open the bundle's encoder and head on ``device``, each checked against the manifest.

    ``tensorrt[:N]`` runs the bundle's native TensorRT plans on GPU N (``open_trt_engines``:
    ``build`` picks a build by key or gives one not yet recorded; ``threads`` and ``strict`` do
    not apply: there is no CPU fallback for a plan). The other devices are onnxruntime's
    execution providers: ``cpu``, ``cuda[:N]`` and ``ort-tensorrt[:N]`` (its TensorRT provider,
    building its own engines from the ONNX graphs); a ``build`` for them is refused.
    """
    from inctrl_runtime.devices import parse_device

    if parse_device(device).kind == "tensorrt":
        from inctrl_runtime.engines.tensorrt.engine import open_trt_engines

        return dict(open_trt_engines(bundle, device, build))
    if build is not None:
        raise InputError(f"a TensorRT build runs on --device tensorrt, not {device!r}")
    from inctrl_runtime.engines.ort import OrtEngine, place

    placement = place(device, strict=strict)
    engines: dict[str, Engine] = {}
    try:
        for name, graph in bundle.graphs.items():
            engine = OrtEngine.open(graph.file, placement, threads, strict, graph.precision)
            engines[name] = engine
            check_signature(engine, graph)
            placement = engine.placement  # the CPU if the provider did not start (warned)
    except BaseException:
        for engine in engines.values():
            engine.close()
        raise
    return engines
