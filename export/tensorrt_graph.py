"""The ONNX graph TensorRT's parser is given: a bundle's graph, with the constants that TensorRT
cannot dequantize dequantized beforehand (the bundle's file is not changed).

onnxruntime's static Q/DQ quantization stores a Gemm's bias as int32 behind a DequantizeLinear
(its integer kernels add it to the int32 accumulator). TensorRT dequantizes only its quantized
types (int8, fp8, int4, fp4: "DequantizeLinear" in the ONNX parser's operator matrix), so such a
bias becomes the float32 constant that node computes, added after TensorRT's int8 matrix product:
the same sum up to float rounding.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

# Constant types a DequantizeLinear may read in ONNX that TensorRT's parser does not take there.
FOLDED_TYPES = (onnx.TensorProto.INT32,)


def parser_graph(path: Path) -> bytes:
    """The serialized graph at ``path`` as TensorRT's parser should read it: the file's own
    bytes, or, where it dequantizes constants of ``FOLDED_TYPES``, a copy with those folded."""
    model = onnx.load(str(path))
    if not fold_dequantized_constants(model.graph):
        return path.read_bytes()
    return model.SerializeToString()


def fold_dequantized_constants(graph: onnx.GraphProto) -> int:
    """Replace each DequantizeLinear of a constant of ``FOLDED_TYPES`` (its scale and zero point
    constants too) by the float constant it computes, and drop the constants only it read;
    returns how many were folded."""
    constants = {tensor.name: tensor for tensor in graph.initializer}
    kept, folded, orphans = [], [], set()
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if (
            node.op_type == "DequantizeLinear"
            and all(name in constants for name in inputs)
            and constants[inputs[0]].data_type in FOLDED_TYPES
        ):
            value = dequantized(node, [numpy_helper.to_array(constants[n]) for n in inputs])
            folded.append(numpy_helper.from_array(value, node.output[0]))
            orphans.update(inputs)
        else:
            kept.append(node)
    if not folded:
        return 0
    read = {name for node in kept for name in node.input} | {out.name for out in graph.output}
    unread = orphans - read
    remaining = [tensor for tensor in graph.initializer if tensor.name not in unread]
    graph.ClearField("node")
    graph.node.extend(kept)
    graph.ClearField("initializer")
    graph.initializer.extend(remaining + folded)
    return len(folded)


def dequantized(node: onnx.NodeProto, inputs: list[np.ndarray]) -> np.ndarray:
    """What a DequantizeLinear computes from constant ``inputs`` (x, scale[, zero point]):
    (x - zero point) x scale, per tensor for a scalar scale, else along ``axis`` (default 1),
    in the scale's type."""
    x, scale = inputs[0], inputs[1]
    zero = inputs[2] if len(inputs) > 2 else np.zeros_like(scale, dtype=x.dtype)
    if scale.ndim == 1 and x.ndim > 0:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % x.ndim
        shape = [1] * x.ndim
        shape[axis] = -1
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    shifted = x.astype(np.int64) - zero.astype(np.int64)
    return (shifted.astype(scale.dtype) * scale).astype(scale.dtype)
