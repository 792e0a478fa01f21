"""Static int8 quantization of the encoder graph: Q/DQ nodes calibrated on normal images.

What is quantized: the matrix products inside the transformer blocks ("/resblocks." in the node
name) whose second input is a constant weight, i.e. each block's attention input and output
projections and its MLP. Their weights are int8, symmetric, one scale per output channel; their
activation inputs int8 with one scale per tensor, fixed by calibration (symmetric, zero point 0:
the form TensorRT consumes). Everything else stays fp32: attention's activation x activation
products, the embedding projection and the adapter (the image residual head takes the small
difference of adapted embeddings, which their quantization noise would swamp). The outputs of
the quantized products are not re-quantized, so each one returns fp32.

Mixed precision: ``keep_fp32`` names block products to leave in fp32 as well, by kind
(``PRODUCT_KINDS``), by block (``3``: its four) or both (``c_proj:3``); the manifest records which
stayed fp32 and the choices that kept them. None by default (docs/int8.md, "Mixed precision",
has the measurements behind that choice); ``inctrl_export.accuracy_control`` chooses them from
labelled data instead.

Every scale is a constant of the graph, so an image's scores do not depend on the batch it is
scored in.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from inctrl_export.calibration_images import (
    CalibrationImages,
    calibration_images,
    demo_calibration_images,
)
from inctrl_export.onnx_files import sort_nodes
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import ImageSource, pixel_digest

if TYPE_CHECKING:
    from inctrl_export.accuracy_control import AccuracyControl

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Percentile: the 99.999th percentile of |x| (docs/int8.md compares the methods).
DEFAULT_CALIBRATION_METHOD = "percentile"
# The manifest's names of the forms. Activations are signed and symmetric, the form TensorRT
# takes; onnxruntime on x86 turns them into uint8 with zero point 128 for its kernels, so
# quantizing them as asymmetric uint8 (which TensorRT does not take) was no faster there.
ACTIVATIONS = "int8-symmetric"
WEIGHTS = "int8-symmetric-per-channel"
QUANTIZED_OPS = ("MatMul", "Gemm")
BLOCKS = "/resblocks."
# Each block's products by kind, as the tracer names them after the block's "/resblocks.N".
PRODUCT_KINDS = {
    "in_proj": "/attn/MatMul",  # attention's input projection (queries, keys and values)
    "out_proj": "/attn/Gemm",  # attention's output projection
    "c_fc": "/mlp/c_fc/",
    "c_proj": "/mlp/c_proj/",
}
# Images per calibration run (the histograms of a batch are held in memory at once).
CALIBRATION_BATCH = 4


@dataclass(frozen=True)
class Int8Settings:
    """How an int8 export quantizes: where its calibration images come from (None: the demo's
    own synthetic normals), the calibration method, and which block products stay fp32: those
    ``keep_fp32`` names, or those the accuracy control (``accuracy``) chooses."""

    calibration: CalibrationImages | None = None
    method: str = DEFAULT_CALIBRATION_METHOD
    keep_fp32: tuple[str, ...] = ()  # block products left in fp32 (``fp32_choice``)
    accuracy: AccuracyControl | None = None

    @classmethod
    def checked(
        cls,
        calibration: CalibrationImages | None,
        method: str | None,
        is_demo: bool,
        keep_fp32: Sequence[str] = (),
        accuracy: AccuracyControl | None = None,
    ) -> Int8Settings:
        """The settings, refused in one line where they cannot work: no ``calibration`` for
        a model other than the demo (the ``accuracy`` data's normals serve where given), an
        unknown method, a folder without images, a ``keep_fp32`` choice that is not a product
        kind, a block or both, or one given with ``accuracy``."""
        method = method or DEFAULT_CALIBRATION_METHOD
        if method not in CALIBRATION_METHODS:
            choices = ", ".join(CALIBRATION_METHODS)
            raise InputError(f"unknown --calibration-method {method!r}; choose {choices}")
        if keep_fp32 and accuracy is not None:
            raise InputError(
                "--keep-fp32 and --accuracy-data both choose the products left in fp32: give "
                "your split with --keep-fp32, or let --accuracy-data choose one"
            )
        if calibration is None and accuracy is not None and not is_demo:
            calibration = accuracy.data  # its categories' train/good images
        if calibration is None and not is_demo:
            raise InputError(
                "--precision int8 needs --calibration DIR: normal images of the bundle's "
                "categories (a folder of images, or an MVTec-layout category or data set folder "
                "whose train/good images are used); only the demo model brings its own"
            )
        for choice in keep_fp32:
            fp32_choice(choice)
        settings = cls(calibration, method, tuple(dict.fromkeys(keep_fp32)), accuracy)
        if calibration is not None:
            settings.images()  # a folder without images is refused before any work
        return settings

    def images(self) -> list[ImageSource]:
        """The calibration images (``calibration_images``, or the demo's)."""
        if self.calibration is None:
            return demo_calibration_images()
        return calibration_images(self.calibration)


def quantized_nodes(model: onnx.ModelProto) -> list[str]:
    """The names of the nodes that may be quantized: the transformer blocks' matrix products
    by a constant weight (see the module docstring)."""
    weights = {tensor.name for tensor in model.graph.initializer}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in QUANTIZED_OPS and BLOCKS in node.name and node.input[1] in weights
    ]


def fp32_choice(choice: str) -> tuple[str | None, int | None]:
    """A ``--keep-fp32`` choice as (kind, block), either None for any: ``KIND`` (one of
    ``PRODUCT_KINDS``), ``BLOCK`` (counted from 0) or ``KIND:BLOCK``, both parts given;
    refused otherwise."""
    parts = choice.split(":")
    if len(parts) == 2 and all(parts):  # KIND:BLOCK, both given
        kind, block = parts
    elif len(parts) == 1 and choice:
        kind, block = ("", choice) if choice.isdigit() else (choice, "")
    else:
        kind, block = "?", ""  # ':3', 'c_fc:', '', 'a:b:c': refused below
    if (kind and kind not in PRODUCT_KINDS) or (block and not block.isdigit()):
        kinds = ", ".join(PRODUCT_KINDS)
        raise InputError(
            f"--keep-fp32 {choice!r}: give a product kind ({kinds}), a block number counted "
            "from 0, or both as KIND:BLOCK, e.g. c_proj:3"
        )
    return kind or None, int(block) if block else None


def product_choice(node: str) -> str:
    """A block product's own ``--keep-fp32`` name, ``KIND:BLOCK``."""
    block = node.split(BLOCKS, 1)[1].split("/", 1)[0]
    kind = next(kind for kind, part in PRODUCT_KINDS.items() if part in node)
    return f"{kind}:{block}"


def kept_in_fp32(nodes: Sequence[str], keep_fp32: Sequence[str]) -> list[str]:
    """The products of ``nodes`` that a ``keep_fp32`` choice names (``fp32_choice``); a
    choice that names none of them, or choices that would leave none in int8, are refused."""

    def named(node: str, choice: str) -> bool:
        kind, block = fp32_choice(choice)
        return (block is None or node.startswith(f"{BLOCKS}{block}/")) and (
            kind is None or PRODUCT_KINDS[kind] in node
        )

    for choice in keep_fp32:
        if not any(named(node, choice) for node in nodes):
            blocks = len({node.split("/")[1] for node in nodes})
            raise InputError(
                f"--keep-fp32 {choice!r}: no such product; the model has blocks 0 to "
                f"{blocks - 1}, each with {', '.join(PRODUCT_KINDS)}"
            )
    kept = [node for node in nodes if any(named(node, choice) for choice in keep_fp32)]
    if len(kept) == len(nodes):
        raise InputError("--keep-fp32 keeps every block product in fp32: export fp32 instead")
    return kept


class _Reader:
    """Feeds the calibration pixels to the fp32 encoder, ``CALIBRATION_BATCH`` at a time
    (onnxruntime's ``CalibrationDataReader`` protocol, with the ranges its strided
    calibration asks for)."""

    def __init__(self, pixels: np.ndarray, input_name: str) -> None:
        self._batches = [
            pixels[i : i + CALIBRATION_BATCH] for i in range(0, len(pixels), CALIBRATION_BATCH)
        ]
        self._input = input_name
        self._next, self._end = 0, len(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._next, self._end = start_index, min(end_index, len(self._batches))

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._next >= self._end:
            return None
        self._next += 1
        return {self._input: self._batches[self._next - 1]}


def quantize_encoder(
    path: Path,
    pixels: np.ndarray,
    method: str = DEFAULT_CALIBRATION_METHOD,
    keep_fp32: Sequence[str] = (),
) -> dict:
    """Quantize the fp32 encoder at ``path`` in place (static Q/DQ, calibrated on ``pixels``),
    but for the block products that ``keep_fp32`` names (``kept_in_fp32``); returns the
    manifest's record of it (``graphs.encoder.quantization``)."""
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=path.parent) as work:
        return Int8Quantizer(path, pixels, method, Path(work)).write(path, keep_fp32)


class Int8Quantizer:
    """One fp32 encoder graph, made ready to quantize and calibrated once: ``write`` makes its
    int8 graph for any split of the block products, every split with the same activation
    ranges (computed by the first ``write``, then read from a cache file in ``work``)."""

    def __init__(self, source: Path, pixels: np.ndarray, method: str, work: Path) -> None:
        model = onnx.load(str(source))
        _constant_identities_to_initializers(model)
        self.products = quantized_nodes(model)
        # Every candidate's, so that the calibrated tensors have the same names in every split.
        _products_before_transposes(model, self.products)
        self._source = work / "fp32.onnx"
        onnx.save(model, str(self._source))
        self.work = work
        self._ranges = work / "ranges.json"
        self._reader = _Reader(pixels, model.graph.input[0].name)
        self.method, self._images = method, len(pixels)
        self._digests = [pixel_digest(image) for image in pixels]  # the same for every split

    def write(self, out: Path, keep_fp32: Sequence[str] = (), because: str | None = None) -> dict:
        """Write the int8 graph that leaves ``keep_fp32``'s products in fp32 to ``out``
        (atomically); returns its quantization record, whose ``fp32_because`` is ``because``
        (default: the ``--keep-fp32`` choices)."""
        from onnxruntime.quantization import (
            CalibrationMethod,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        fp32 = kept_in_fp32(self.products, keep_fp32)
        nodes = [node for node in self.products if node not in fp32]
        quantized = self._ranges.with_name(f".{out.name}.int8.onnx")
        with _quiet():
            quantize_static(
                self._source, quantized, self._reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_quantize=nodes,
                calibrate_method={
                    "minmax": CalibrationMethod.MinMax,
                    "percentile": CalibrationMethod.Percentile,
                    "entropy": CalibrationMethod.Entropy,
                }[self.method],
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": True,
                    "CalibStridedMinMax": 1,  # one batch at a time, whatever the method
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                },
                calibration_cache_path=self._ranges,
            )  # fmt: skip
        onnx.checker.check_model(str(quantized), full_check=True)
        os.replace(quantized, out)
        if because is None and keep_fp32:
            because = f"--keep-fp32 {', '.join(keep_fp32)}"
        return {
            "format": "qdq",
            "activations": ACTIVATIONS,
            "weights": WEIGHTS,
            "method": self.method,
            "images": self._images,
            "int8_products": len(nodes),
            "fp32_products": fp32,
            "fp32_choices": list(keep_fp32),
            "fp32_because": because,
            "image_digests": list(self._digests),
        }


def _constant_identities_to_initializers(model: onnx.ModelProto) -> None:
    """Replace each Identity of an initializer by a copy of it under the Identity's output name.

    The tracer shares equal parameters (zero biases, say) through Identity nodes; a Gemm whose
    bias is such an Identity's output is not quantized with its bias, and onnxruntime then
    cannot fuse it into an integer kernel.
    """
    initializers = {tensor.name: tensor for tensor in model.graph.initializer}
    outputs = {output.name for output in model.graph.output}
    kept = []
    for node in model.graph.node:
        if (
            node.op_type == "Identity"
            and node.input[0] in initializers
            and node.output[0] not in outputs
        ):
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            kept.append(node)
    model.graph.ClearField("node")
    model.graph.node.extend(kept)


def _products_before_transposes(model: onnx.ModelProto, nodes: Sequence[str]) -> None:
    """Where a quantized product takes a Transpose's output that keeps the last axis last
    (attention's input, L x B x D), multiply the Transpose's input and transpose the product.

    The same arithmetic; but then the activation's Q/DQ pair sits right after the layer norm,
    as onnxruntime's CPU optimizer needs to fuse an int8 product with int8 activations (with
    the Transpose between them it leaves a float MatMul behind). The Transpose stays for its
    other readers (the shape arithmetic).
    """
    producers = {name: node for node in model.graph.node for name in node.output}
    wanted = set(nodes)
    for product in [n for n in model.graph.node if n.name in wanted]:
        move = producers.get(product.input[0])
        if move is None or move.op_type != "Transpose":
            continue
        perm = next(list(a.ints) for a in move.attribute if a.name == "perm")
        if perm[-1] != len(perm) - 1:
            continue
        own_input, untransposed = f"{product.name}/input", f"{product.name}/untransposed"
        model.graph.node.extend([
            onnx.helper.make_node(
                "Identity", [move.input[0]], [own_input], name=f"{product.name}/Identity"
            ),
            onnx.helper.make_node(
                "Transpose", [untransposed], [product.output[0]],
                name=f"{product.name}/Transpose", perm=perm,
            ),
        ])  # fmt: skip
        product.input[0], product.output[0] = own_input, untransposed
    sort_nodes(model.graph)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """onnxruntime's quantization logs advice (pre-process the model) and prints histogram
    progress; neither is for our users."""
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        logger.setLevel(level)
