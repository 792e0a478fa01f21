"""Writing the graphs as ONNX files: trace, convert to fp16 where asked, check.

The TorchScript exporter is used (``dynamo=False``): it needs no extra package and gives plain
opset-17 graphs with the dynamic axes of ``inctrl_export.graphs``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import torch

from inctrl_export.graphs import GraphSpec, dummy_inputs
from inctrl_runtime.errors import InputError

MIN_OPSET = 17  # LayerNormalization as one op
# Tracing inputs: batch 2 and k = 2. The self-check uses other sizes (see parity.py).
TRACE_BATCH = 2
TRACE_SHOTS = 2
# fp16 keeps these in fp32: normalization statistics, softmax and the reductions of unit-norming
# lose too much in half precision (docs/model.md, "Numerical parity").
FP32_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "ReduceSumSquare", "ReduceMean", "Sqrt")


def check_opset(opset: int) -> int:
    """The opset, if this onnx can write it and the graphs need no less."""
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise InputError(f"--opset {opset} is not usable: choose {MIN_OPSET} to {newest}")
    return opset


@contextlib.contextmanager
def _traceable() -> Iterator[None]:
    """nn.MultiheadAttention's fused inference path has no ONNX form; trace the plain one."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            # The tracer warns about shape arithmetic it records as constants; the dynamic axes
            # are checked by running the graph at other sizes (parity.py).
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            # The TorchScript exporter is deprecated in favour of the torch.export one, which
            # needs onnxscript; ours stays dependency-free until that one is required.
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def export_graph(
    module: torch.nn.Module,
    spec: GraphSpec,
    path: str | os.PathLike,
    opset: int,
    prompt_patches: int,
    precision: str = "fp32",
) -> None:
    """Trace ``module`` with ``spec``'s names and dynamic axes into an ONNX file at ``path``.

    ``precision="fp16"`` stores the weights and most arithmetic in half precision, keeps the
    inputs and outputs float32 and keeps ``FP32_OPS`` in float32 (int8 is made from the fp32
    graph: ``inctrl_export.quantize``).
    """
    inputs = dummy_inputs(spec, TRACE_BATCH, prompt_patches)
    with _traceable(), torch.no_grad():
        torch.onnx.export(
            module,
            tuple(inputs.values()),
            str(path),
            input_names=list(spec.inputs),
            output_names=list(spec.outputs),
            dynamic_axes=spec.dynamic_axes(),
            opset_version=opset,
            dynamo=False,
        )
    if precision == "fp16":
        _to_fp16(Path(path))
    onnx.checker.check_model(str(path), full_check=True)


def _to_fp16(path: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(path)), keep_io_types=True, op_block_list=list(FP32_OPS)
    )
    sort_nodes(model.graph)
    onnx.save(model, str(path))


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after the producers of its inputs (the fp16 converter and the
    int8 rewrites append nodes at the end, which ONNX forbids)."""
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise RuntimeError("the fp16 graph has a cycle or an undefined input")
        for node in ready:
            available.update(node.output)
        ordered.extend(ready)
        done = {id(node) for node in ready}
        pending = [n for n in pending if id(n) not in done]
    graph.ClearField("node")
    graph.node.extend(ordered)
