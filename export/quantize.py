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
stayed fp32 and the choices that kept them. None by default, as no rule measured on the demo
keeps int8's speed and fits its final-score drift goal (README, "int8 mixed precision"): its
drift comes from rounding the activations, which differs from image to image and so does not
cancel in the query-prompt differences its heads score; every product alone drifts its final
score by 0.007 to 0.029, and fitting 1e-2 took 22 of its 24 products in fp32.

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

import numpy as np
import onnx

from inctrl_export.onnx_files import sort_nodes
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import list_images
from inctrl_runtime.preprocess import ImageSource, Preprocessing, pixel_digest, preprocess_many

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# Percentile (the 99.999th percentile of |x|) drifted least from PyTorch fp32 on the demo's
# generated data, entropy close behind and minmax last; for BERT, NVIDIA's int8 study (Wu et
# al. 2020) also found percentile calibration better than max.
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
# The demo's calibration: this many train/good normals of each of its categories, rendered in
# memory with a seed the demo's training data never used.
DEMO_IMAGES_PER_CATEGORY = 5
DEMO_CALIBRATION_SEED = 9001
DEMO_IMAGE_SIZE = 256
# A larger --calibration folder is thinned to this many images, evenly spaced in name order.
MAX_CALIBRATION_IMAGES = 200
# Images per calibration run (the histograms of a batch are held in memory at once).
CALIBRATION_BATCH = 4

Calibration = str | os.PathLike | Sequence[ImageSource]


@dataclass(frozen=True)
class Int8Settings:
    """How an int8 export quantizes: where its calibration images come from (None: the demo's
    own synthetic normals) and the calibration method."""

    calibration: Calibration | None = None
    method: str = DEFAULT_CALIBRATION_METHOD
    keep_fp32: tuple[str, ...] = ()  # block products left in fp32 (``fp32_choice``)

    @classmethod
    def checked(
        cls,
        calibration: Calibration | None,
        method: str | None,
        is_demo: bool,
        keep_fp32: Sequence[str] = (),
    ) -> Int8Settings:
        """The settings, refused in one line where they cannot work: no ``calibration`` for
        a model other than the demo, an unknown method, a folder without images, a
        ``keep_fp32`` choice that is not a product kind, a block or both."""
        method = method or DEFAULT_CALIBRATION_METHOD
        if method not in CALIBRATION_METHODS:
            choices = ", ".join(CALIBRATION_METHODS)
            raise InputError(f"unknown --calibration-method {method!r}; choose {choices}")
        if calibration is None and not is_demo:
            raise InputError(
                "--precision int8 needs --calibration DIR: normal images of the bundle's "
                "categories (a folder of images, or an MVTec-layout category or data set folder "
                "whose train/good images are used); only the demo model brings its own"
            )
        for choice in keep_fp32:
            fp32_choice(choice)
        settings = cls(calibration, method, tuple(dict.fromkeys(keep_fp32)))
        if calibration is not None:
            settings.images()  # a folder without images is refused before any work
        return settings

    def images(self) -> list[ImageSource]:
        """The calibration images (``calibration_images``, or the demo's)."""
        if self.calibration is None:
            return demo_calibration_images()
        return calibration_images(self.calibration)


def calibration_images(calibration: Calibration) -> list[ImageSource]:
    """The images to calibrate on: a list as given, or from a folder: a category folder in
    MVTec layout gives its train/good images; a data set root whose subfolders are category
    folders gives the train/good images of each; any other folder the images directly in it.
    More than ``MAX_CALIBRATION_IMAGES`` are thinned, evenly spaced in name order."""
    if not isinstance(calibration, (str, os.PathLike)):
        images = list(calibration)
        if not images:
            raise InputError("no calibration images given")
        return _thinned(images)
    folder = Path(calibration)
    if not folder.is_dir():
        raise InputError(f"--calibration {folder}: no such folder of images")
    categories = [folder] if _is_category(folder) else sorted(
        f for f in folder.iterdir() if f.is_dir() and _is_category(f)
    )  # fmt: skip
    if categories:
        images = [path for category in categories for path in _normals(category)]
        where = "in train/good"
    else:
        images, where = list_images(folder), "directly in it"
    if not images:
        raise InputError(
            f"--calibration {folder}: no images {where}; give a folder of normal images, or "
            "an MVTec-layout category (or data set) folder whose train/good holds them"
        )
    return _thinned(images)


def _is_category(folder: Path) -> bool:
    return (folder / "train" / "good").is_dir()


def _normals(category: Path) -> list[Path]:
    return list_images(category / "train" / "good")


def _thinned(images: list[ImageSource]) -> list[ImageSource]:
    if len(images) <= MAX_CALIBRATION_IMAGES:
        return images
    picks = np.linspace(0, len(images) - 1, MAX_CALIBRATION_IMAGES).round().astype(int)
    return [images[i] for i in picks]


def demo_calibration_images() -> list[np.ndarray]:
    """Synthetic train/good normals of the demo's categories, rendered in memory
    (``inctrl.synth.render``: the same images every time)."""
    from inctrl.demo import HELD_OUT_CATEGORIES, TRAIN_CATEGORIES
    from inctrl.synth import render

    return [
        render(category, "train", "good", index, seed=DEMO_CALIBRATION_SEED,
               size=DEMO_IMAGE_SIZE).image
        for category in (*TRAIN_CATEGORIES, *HELD_OUT_CATEGORIES)
        for index in range(DEMO_IMAGES_PER_CATEGORY)
    ]  # fmt: skip


def calibration_pixels(images: Sequence[ImageSource], preprocessing: Preprocessing) -> np.ndarray:
    """The calibration images as the runtime feeds them to the encoder: N x 3 x S x S."""
    return preprocess_many(list(images), preprocessing)


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
    ``PRODUCT_KINDS``), ``BLOCK`` (counted from 0) or ``KIND:BLOCK``; refused otherwise."""
    kind, _, block = choice.rpartition(":") if ":" in choice else (choice, "", "")
    if kind.isdigit() and not block:
        kind, block = "", kind
    if (kind and kind not in PRODUCT_KINDS) or (block and not block.isdigit()) or not choice:
        kinds = ", ".join(PRODUCT_KINDS)
        raise InputError(
            f"--keep-fp32 {choice!r}: give a product kind ({kinds}), a block number counted "
            "from 0, or both as KIND:BLOCK, e.g. c_proj:3"
        )
    return kind or None, int(block) if block else None


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
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load(str(path))
    _constant_identities_to_initializers(model)
    candidates = quantized_nodes(model)
    fp32 = kept_in_fp32(candidates, keep_fp32)
    nodes = [node for node in candidates if node not in fp32]
    _products_before_transposes(model, nodes)
    with tempfile.TemporaryDirectory(prefix=".int8-", dir=path.parent) as work:
        source = Path(work) / "fp32.onnx"
        onnx.save(model, str(source))
        quantized = Path(work) / "int8.onnx"
        with _quiet():
            quantize_static(
                source, quantized, _Reader(pixels, model.graph.input[0].name),
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
                }[method],
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    "CalibTensorRangeSymmetric": True,
                    "CalibStridedMinMax": 1,  # one batch at a time, whatever the method
                    "OpTypesToExcludeOutputQuantization": list(QUANTIZED_OPS),
                },
            )  # fmt: skip
        onnx.checker.check_model(str(quantized), full_check=True)
        os.replace(quantized, path)
    return {
        "format": "qdq",
        "activations": ACTIVATIONS,
        "weights": WEIGHTS,
        "method": method,
        "images": len(pixels),
        "int8_products": len(nodes),
        "fp32_products": fp32,
        "fp32_because": f"--keep-fp32 {', '.join(keep_fp32)}" if keep_fp32 else None,
        "image_digests": [pixel_digest(image) for image in pixels],
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
