"""The ``config.pbtxt`` of each model of a bundle's repository, as text.

Shapes come from the bundle's manifest (the encoder's graph record and the model record), never
from constants; dims exclude the batch axis, which every model has (``max_batch_size``). The
encoder's text is shared by its three runtimes: the python backend, onnxruntime and TensorRT
(``encoder_config``); ``inctrl_export.triton`` writes the latter two with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import ANOMALOUS
from inctrl_runtime.errors import InputError
from inctrl_runtime.triton.names import (
    CATEGORY,
    DECISIVE_TILE,
    ENCODER,
    ENCODERS,
    ENTRY,
    FRAME_SIZE,
    IMAGE,
    OUTPUTS,
    REGIONS,
    TILING,
    WATCHED,
)

DEFAULT_MAX_BATCH = 32
# How long a model's scheduler waits for more requests to fill a batch: a small fraction of one
# encoder pass on a CPU, enough for concurrent clients' requests to meet.
QUEUE_DELAY_US = 2000
_TYPES = {
    "float32": "TYPE_FP32",
    "int32": "TYPE_INT32",
    "bool": "TYPE_BOOL",
    "bytes": "TYPE_STRING",
}
# What runs each encoder, and where its instances go: a plan is built for a GPU; onnxruntime's
# go on the server's GPUs when it has them (its CUDA provider), else on the CPU (KIND_AUTO), so
# one repository loads on both; the python encoder runs the runtime on the CPU.
_ENCODER_RUNTIMES = {
    "python": ('backend: "python"', "KIND_CPU"),
    "onnxruntime": ('platform: "onnxruntime_onnx"', "KIND_AUTO"),
    "tensorrt": ('platform: "tensorrt_plan"', "KIND_GPU"),
}


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of a model: name, numpy dtype name, dims without the batch axis."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False  # an input a request may leave out

    def text(self) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        optional = " optional: true" if self.optional else ""
        return (
            f'  {{ name: "{self.name}" data_type: {_TYPES[self.dtype]} dims: [ {dims} ]'
            f"{optional} }}"
        )


def preferred_batch_sizes(max_batch: int) -> list[int]:
    """The batch sizes the dynamic batcher aims for: a quarter, a half and all of the maximum."""
    return sorted({max(1, max_batch // 4), max(1, max_batch // 2), max_batch})


def check_serving_sizes(max_batch: int, instances: int) -> None:
    """Refuse a maximum batch or an instance count that is not a whole number of at least 1."""
    for option, value in (("--max-batch", max_batch), ("--instances", instances)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{option} must be a whole number of at least 1, got {value!r}")


def model_config(
    name: str,
    runtime: str,
    max_batch: int,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    instances: int = 1,
    kind: str = "KIND_CPU",
    parameters: Mapping[str, object] | None = None,
) -> str:
    """A model's config text; ``runtime`` is its ``backend: ...`` or ``platform: ...`` line;
    every model has a dynamic batcher."""
    lines = [f'name: "{name}"', runtime, f"max_batch_size: {max_batch}"]
    lines += ["input [", ",\n".join(t.text() for t in inputs), "]"]
    lines += ["output [", ",\n".join(t.text() for t in outputs), "]"]
    sizes = ", ".join(str(s) for s in preferred_batch_sizes(max_batch))
    lines.append(
        f"dynamic_batching {{ preferred_batch_size: [ {sizes} ] "
        f"max_queue_delay_microseconds: {QUEUE_DELAY_US} }}"
    )
    lines.append(f"instance_group [ {{ count: {instances} kind: {kind} }} ]")
    for key, value in (parameters or {}).items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(lines) + "\n"


def encoder_tensors(bundle: Bundle) -> tuple[list[TensorConfig], list[TensorConfig]]:
    """The encoder graph's inputs and outputs as the manifest records them, without the batch."""
    graph = bundle.graphs["encoder"]
    inputs, outputs = (
        [TensorConfig(s.name, s.dtype, tuple(int(d) for d in s.shape[1:])) for s in specs]
        for specs in (graph.inputs, graph.outputs)
    )
    return inputs, outputs


def output_tensors() -> list[TensorConfig]:
    """The entry point's outputs, a row per image: a float32 but the patch map (P values, a
    tiled frame's T * P: variable), the decision (bool), the frame's size (width and height,
    int32), the regions and the tiling (JSON text) and the deciding tile (int32): ``wire``."""
    others = {
        "patch_residual_map": ("float32", (-1,)),
        ANOMALOUS: ("bool", (1,)),
        FRAME_SIZE: ("int32", (2,)),
        REGIONS: ("bytes", (1,)),
        TILING: ("bytes", (1,)),
        DECISIVE_TILE: ("int32", (1,)),
    }
    return [TensorConfig(name, *others.get(name, ("float32", (1,)))) for name in OUTPUTS]


def _text(name: str) -> TensorConfig:
    """One string a request row: the image file's bytes, or the category's utf-8 name."""
    return TensorConfig(name, "bytes", (1,))


def encoder_config(
    bundle: Bundle,
    encoder: str,
    max_batch: int,
    instances: int,
    parameters: Mapping[str, object] | None = None,
) -> str:
    """The encoder shared by every category: ``python`` (the runtime's engine on the CPU;
    ``parameters`` name the bundle), ``onnxruntime`` (model.onnx) or ``tensorrt``
    (model.plan, on the GPU), with a dynamic batcher and ``instances`` instances."""
    if encoder not in ENCODERS:
        raise InputError(f"unknown encoder backend {encoder!r}: choose {', '.join(ENCODERS)}")
    runtime, kind = _ENCODER_RUNTIMES[encoder]
    inputs, outputs = encoder_tensors(bundle)
    return model_config(
        ENCODER, runtime, max_batch, inputs, outputs, instances, kind, parameters=parameters
    )


def entry_config(max_batch: int, instances: int, parameters: Mapping[str, object]) -> str:
    """The entry point: image file bytes and a category -> every output (python backend,
    ``instances`` instances, each holding the banks and the head; the encoder is called from
    it: ``inctrl_runtime.triton.entry``)."""
    return model_config(
        ENTRY, 'backend: "python"', max_batch,
        [_text(IMAGE), _text(CATEGORY), TensorConfig(WATCHED, "bool", (1,), optional=True)],
        output_tensors(), instances, parameters=parameters,
    )  # fmt: skip
