"""The graph TensorRT's parser reads (``inctrl_export.tensorrt_graph``), on a CPU: onnxruntime's
static Q/DQ quantization of 2-D products (Gemm, as the tracer writes the blocks' attention output
projections) stores their biases as int32 behind DequantizeLinear, which TensorRT does not
dequantize; the parser's copy holds those biases as float32 constants, dequantizes only int8 with
zero points 0, and computes what the bundle's graph computes. Whether TensorRT then parses and
builds it needs the builder: tests/test_tensorrt_gpu.py (int8).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inctrl_export.tensorrt_graph import parser_graph

WIDTH, HIDDEN, OUT = 16, 8, 4


class _Batches:
    """onnxruntime's calibration data reader: a few seeded batches of ``x``."""

    def __init__(self, batches: list[np.ndarray]) -> None:
        self.batches = iter(batches)

    def get_next(self) -> dict | None:
        batch = next(self.batches, None)
        return None if batch is None else {"x": batch}


def _inputs(seed: int, count: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((5, WIDTH)).astype(np.float32) for _ in range(count)]


@pytest.fixture(scope="module")
def graphs(tmp_path_factory) -> tuple[Path, Path]:
    """An fp32 graph of two Gemms with biases (x -> Gemm -> Relu -> Gemm) and its static Q/DQ
    int8 quantization, symmetric and per channel, as the int8 export makes it."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    folder = tmp_path_factory.mktemp("qdq")
    rng = np.random.default_rng(0)
    weights = {
        "w1": rng.standard_normal((HIDDEN, WIDTH)), "b1": rng.standard_normal(HIDDEN),
        "w2": rng.standard_normal((OUT, HIDDEN)), "b2": rng.standard_normal(OUT),
    }  # fmt: skip
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], "/resblocks.0/Gemm", transB=1),
        helper.make_node("Relu", ["h"], ["r"], "/resblocks.0/Relu"),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], "/resblocks.0/Gemm_1", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "gemms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", WIDTH])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", OUT])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )  # fmt: skip
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
    quantize_static(
        fp32, int8, _Batches(_inputs(1)), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True},
    )  # fmt: skip
    return fp32, int8


def _dequantized_types(model: onnx.ModelProto) -> list[int]:
    """The type of each constant a DequantizeLinear reads (activations are not constants)."""
    constants = {tensor.name: tensor for tensor in model.graph.initializer}
    return [
        constants[node.input[0]].data_type
        for node in model.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in constants
    ]


def _run(model: bytes | str, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.unit
def test_the_parser_reads_float_biases_and_only_int8_dequantized(graphs) -> None:
    fp32, int8 = graphs
    quantized = onnx.load(str(int8))
    assert TensorProto.INT32 in _dequantized_types(quantized)  # what onnxruntime writes
    lowered = onnx.load_from_string(parser_graph(int8))
    onnx.checker.check_model(lowered, full_check=True)
    assert set(_dequantized_types(lowered)) == {TensorProto.INT8}
    constants = {t.name: numpy_helper.to_array(t) for t in lowered.graph.initializer}
    assert not [name for name, value in constants.items() if value.dtype == np.int32]
    zero_points = [constants[node.input[2]] for node in lowered.graph.node
                   if node.op_type in ("QuantizeLinear", "DequantizeLinear")]  # fmt: skip
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert _dequantized_types(lowered).count(TensorProto.INT8) == 2  # the two weights
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(fp32)).graph.initializer}
    for name in ("b1", "b2"):  # the biases as float32 again, to the int32 step
        assert constants[name].dtype == np.float32
        np.testing.assert_allclose(constants[name], original[name], rtol=0, atol=1e-3)


@pytest.mark.parity
def test_the_parsers_graph_computes_what_the_bundles_does(graphs) -> None:
    _, int8 = graphs
    lowered = parser_graph(int8)
    for x in _inputs(2):
        np.testing.assert_allclose(_run(lowered, x), _run(str(int8), x), rtol=0, atol=1e-5)


@pytest.mark.unit
def test_a_graph_with_nothing_to_fold_is_read_as_its_file(graphs) -> None:
    fp32, int8 = graphs
    assert parser_graph(fp32) == fp32.read_bytes()
    before = int8.read_bytes()
    parser_graph(int8)
    assert int8.read_bytes() == before  # the bundle's graph is not changed
