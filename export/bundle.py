"""``inctrl-export onnx``: an InCTRL checkpoint -> a checked, self-describing bundle folder.

The bundle is built in a hidden staging folder beside ``out``: graphs, text priors, a manifest,
then the self-check through ``inctrl_runtime``; the manifest is rewritten with the check's
summary and the folder renamed into place. A failure at any step leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inctrl.demo import HELD_OUT_CATEGORIES, TRAIN_CATEGORIES
from inctrl.loading import load_model, resolve_checkpoint
from inctrl.model import InCTRL
from inctrl_export.accuracy_control import (
    DEFAULT_GRANULARITY,
    DEFAULT_MAX_AUROC_CHANGE,
    DEFAULT_SHOTS,
    AccuracyControl,
    controlled_int8,
)
from inctrl_export.calibration_images import CalibrationImages, calibration_pixels
from inctrl_export.graphs import graph_specs, wrappers
from inctrl_export.onnx_files import TRACE_SHOTS, check_opset, export_graph
from inctrl_export.parity import DEFAULT_ATOL, ParityReport, compare, pass_mark
from inctrl_export.quantize import Int8Quantizer, Int8Settings, quantize_encoder
from inctrl_runtime.bundle import PRIORS
from inctrl_runtime.engines import TensorSpec, signature_difference
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import check_category_name
from inctrl_runtime.files import (
    REPLACED,
    check_output_path,
    file_sha256,
    new_staging_folder,
    staging_folder,
    write_json,
)
from inctrl_runtime.manifest import FORMAT, MANIFEST, SCHEMA_VERSION

if TYPE_CHECKING:
    from inctrl.config import InCTRLConfig
    from inctrl_runtime.detector import Detector

EXPORT_PRECISIONS = tuple(DEFAULT_ATOL)
# The self-check differs from the tracing inputs (batch 2, k = 2) in both batch and k.
CHECK_SHOTS = 3
CHECK_QUERIES = 3
CHECK_SEED = 20240617
# An int8 export's self-check scores at least this many queries (its drift is larger and
# uneven: three would understate it): the demo's own normals and generated defects of the
# category, labelled (its AUROC change judged); for a checkpoint, its calibration images.
INT8_CHECK_QUERIES = 32

Log = Callable[[str], None]


@dataclass
class ExportResult:
    """What ``export_bundle`` made: the folder, its files' sizes, step times, the self-check."""

    path: Path
    file_bytes: dict[str, int]
    seconds: dict[str, float] = field(default_factory=dict)
    report: ParityReport | None = None


def export_bundle(
    out: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    categories: Sequence[str] = (),
    clip_weights: str | os.PathLike | None = None,
    opset: int = 17,
    precision: str = "fp32",
    verify: bool = True,
    atol: float | None = None,
    force: bool = False,
    log: Log = lambda message: None,
    model: InCTRL | None = None,
    calibration: CalibrationImages | None = None,
    calibration_method: str | None = None,
    keep_fp32: Sequence[str] = (),
    accuracy: AccuracyOptions | None = None,
) -> ExportResult:
    """Export a checkpoint (default: the embedded demo) as a bundle for ``categories``.

    Args:
        out: the bundle folder to create (refused if it exists, unless ``force``).
        model: export this loaded model instead of reading ``checkpoint`` (the manifest then
            names no source file).
        categories: product categories whose text priors go in (default for the demo: its
            synthetic categories).
        precision: ``fp32``; ``fp16`` (encoder weights and most arithmetic in half precision);
            ``int8`` (static Q/DQ int8 of the transformer blocks' matrix products by weights,
            calibrated on images: ``inctrl_export.quantize``).
        calibration: int8 only: normal images of the bundle's categories, a folder
            (``quantize.calibration_images`` says which of its images) or a list of images;
            required unless the model is the demo, which has its own synthetic normals.
        calibration_method: int8 only: ``percentile`` (default), ``minmax`` or ``entropy``.
        keep_fp32: int8 only: block products to leave in fp32, by kind, block or both
            (``quantize.fp32_choice``); none by default.
        accuracy: int8 only: labelled data and a bound: the products to leave in fp32 are
            chosen until every category's AUROC change holds it (``accuracy_control``);
            with a checkpoint, the data's train/good images calibrate unless ``calibration``
            says otherwise.
        verify: run the self-check; with ``atol`` (default: the contract's tolerance for
            ``precision``) as the pass mark.
        log: called with one line per finished step.
    """
    out = Path(out)
    given = model is not None
    checkpoint_path, is_demo = (None, False) if given else resolve_checkpoint(checkpoint)
    categories = _check_arguments(out, categories, is_demo, precision, opset, force)
    int8 = _int8_settings(
        precision, calibration, calibration_method, is_demo, keep_fp32, accuracy, categories
    )
    atol = pass_mark(atol, precision)
    seconds: dict[str, float] = {}
    if model is None:
        with _timed(seconds, "load", log, "loaded the model"):
            model = load_model(checkpoint, clip_weights, notice=log)
    elif model.device.type != "cpu" or model.precision != "fp32":
        raise InputError("export traces on the CPU in fp32: call model.to_device('cpu') first")
    if int8 is not None:
        with _timed(seconds, "calibration", log, "read the calibration images"):
            pixels = calibration_pixels(int8.images(), model.preprocessing)
    with staging_folder(out) as staging:
        _write_graphs(model, staging, opset, "fp32" if int8 else precision, seconds, log)
        with _timed(seconds, "priors", log, f"text priors of {len(categories)} categories"):
            _write_priors(model, categories, staging / PRIORS)
        describe = partial(_manifest, model, staging, checkpoint_path, is_demo, categories, opset)
        quantization = None
        if int8 is not None:
            quantization = _quantize(model, staging, int8, pixels, describe, seconds, log)
        manifest = describe(precision)
        if quantization is not None:
            manifest["graphs"]["encoder"]["quantization"] = quantization
        write_json(staging / MANIFEST, manifest)
        report = None
        if verify:
            with _timed(seconds, "verify", log, "checked against PyTorch"):
                checked = None if int8 is None else int8_check_images(
                    categories[0], is_demo, int8.images())  # fmt: skip
                report = self_check(model, staging, categories[0], atol, checked)
            manifest["verification"] = report.to_dict()
        manifest["export_seconds"] = seconds
        write_json(staging / MANIFEST, manifest)
        _move_into_place(staging, out)
    file_bytes = {name: record["bytes"] for name, record in manifest["files"].items()}
    return ExportResult(out, file_bytes, seconds, report)


def _check_arguments(
    out: Path, categories: Sequence[str], is_demo: bool, precision: str, opset: int, force: bool
) -> list[str]:
    """Everything that can be refused before any work; returns the categories to export."""
    if precision not in EXPORT_PRECISIONS:
        choices = " or ".join(EXPORT_PRECISIONS)
        raise InputError(f"unknown --precision {precision!r}; choose {choices}")
    check_opset(opset)
    check_output_path(out, "--out", replaces=force, may_be_bundle=True)
    if out.exists() and not force and (not out.is_dir() or any(out.iterdir())):
        raise InputError(
            f"{out}: already exists; choose another --out, or --force to replace it (its "
            "registered references go with it)"
        )
    categories = list(dict.fromkeys(categories))
    if not categories:
        if not is_demo:
            raise InputError("no --category given: name the product categories to score")
        categories = [*TRAIN_CATEGORIES, *HELD_OUT_CATEGORIES]
    for category in categories:
        check_category_name(category)
    return categories


@dataclass(frozen=True)
class AccuracyOptions:
    """``--accuracy-data`` and its options, as given (``accuracy_control.AccuracyControl``
    checks them against the bundle's categories)."""

    data: str | os.PathLike
    max_auroc_change: float = DEFAULT_MAX_AUROC_CHANGE
    granularity: str = DEFAULT_GRANULARITY
    shots: int = DEFAULT_SHOTS


def _int8_settings(
    precision: str,
    calibration: CalibrationImages | None,
    method: str | None,
    is_demo: bool,
    keep_fp32: Sequence[str],
    accuracy: AccuracyOptions | None,
    categories: Sequence[str],
) -> Int8Settings | None:
    """The int8 export's settings (None for another precision, which takes none of them)."""
    if precision == "int8":
        control = None if accuracy is None else AccuracyControl.checked(
            accuracy.data, categories, accuracy.max_auroc_change, accuracy.granularity,
            accuracy.shots)  # fmt: skip
        return Int8Settings.checked(calibration, method, is_demo, keep_fp32, control)
    options = (
        ("--calibration", calibration),
        ("--calibration-method", method),
        ("--keep-fp32", list(keep_fp32) or None),
        ("--accuracy-data", accuracy),
    )
    given = [option for option, value in options if value is not None]
    if given:
        raise InputError(f"{', '.join(given)}: only for --precision int8, not {precision}")
    return None


def _quantize(
    model: InCTRL,
    staging: Path,
    int8: Int8Settings,
    pixels: np.ndarray,
    describe: Callable[[str], dict],
    seconds: dict[str, float],
    log: Log,
) -> dict:
    """Quantize the staged fp32 encoder in place; returns the quantization record. With
    accuracy control, the staged fp32 bundle (``describe`` makes its manifest) scores the
    data first, each split quantized with the ranges of one calibration."""
    encoder = staging / graph_specs(model.config)["encoder"].file
    if int8.accuracy is None:
        done = f"quantized the encoder (int8, {int8.method} on {len(pixels)} images)"
        with _timed(seconds, "quantize", log, done):
            return quantize_encoder(encoder, pixels, int8.method, int8.keep_fp32)
    write_json(staging / MANIFEST, describe("fp32"))
    control = int8.accuracy
    done = (f"accuracy control on {control.images} images of {len(control.categories)} "
            f"categories ({int8.method} calibration on {len(pixels)} images)")  # fmt: skip
    with (
        _timed(seconds, "accuracy_control", log, done),
        tempfile.TemporaryDirectory(prefix=".int8-", dir=staging) as work,
    ):
        quantizer = Int8Quantizer(encoder, pixels, int8.method, Path(work))
        return controlled_int8(model, staging, encoder, quantizer, control, log)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], step: str, log: Log, done: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    seconds[step] = time.perf_counter() - began
    log(f"{done} ({seconds[step]:.1f} s)")


def _write_graphs(
    model: InCTRL,
    folder: Path,
    opset: int,
    precision: str,
    seconds: dict[str, float],
    log: Log,
) -> None:
    specs = graph_specs(model.config)
    modules = wrappers(model)
    prompt_patches = TRACE_SHOTS * model.config.vision.num_patches
    for name, spec in specs.items():
        graph_precision = precision if name == "encoder" else "fp32"
        path = folder / spec.file
        with _timed(seconds, name, log, f"wrote {spec.file} ({graph_precision})"):
            export_graph(modules[name], spec, path, opset, prompt_patches, graph_precision)


def _write_priors(model: InCTRL, categories: Sequence[str], path: Path) -> None:
    priors = {}
    for category in categories:
        prior = model.text_prior(category)
        priors[category] = {"normal": prior.normal.tolist(), "anomaly": prior.anomaly.tolist()}
    write_json(path, priors)


def _manifest(
    model: InCTRL,
    folder: Path,
    checkpoint: Path | None,
    is_demo: bool,
    categories: Sequence[str],
    opset: int,
    precision: str,
) -> dict:
    import onnx
    import onnxruntime
    import open_clip
    import torch

    import inctrl

    config = model.config
    specs = graph_specs(config)
    graphs = {
        name: {**spec.to_manifest(), "opset": opset, "precision": "fp32"}
        for name, spec in specs.items()
    }
    graphs["encoder"]["precision"] = precision
    files = [spec.file for spec in specs.values()] + [PRIORS]
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "name": config.name,
            "backbone": f"open_clip ViT (preset {config.name})",
            "image_size": config.vision.image_size,
            "patch_size": config.vision.patch_size,
            "grid": config.vision.image_size // config.vision.patch_size,
            "num_patches": config.vision.num_patches,
            "tapped_blocks": list(config.vision.tapped_blocks),
            "width": config.vision.width,
            "embed_dim": config.embed_dim,
            "text_temperature": config.head.text_temperature,
            "config": config.to_dict(),
        },
        "preprocessing": model.preprocessing.to_manifest(),
        "graphs": graphs,
        "categories": list(categories),
        "files": {
            name: {"sha256": file_sha256(folder / name), "bytes": (folder / name).stat().st_size}
            for name in files
        },
        "source": {
            # By name and hash, not path: the bundle travels to other machines.
            "file": checkpoint.name if checkpoint else None,
            "sha256": file_sha256(checkpoint) if checkpoint else None,
            "demo": is_demo,
            "backbone": model.backbone_origin,
        },
        "versions": {
            "inctrl": inctrl.__version__,
            "torch": torch.__version__,
            "open_clip": open_clip.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
            "python": platform.python_version(),
        },
    }


def check_images(count: int, seed: int) -> list[np.ndarray]:
    """Seeded RGB images of assorted sizes and aspect ratios (so resizing and cropping run)."""
    rng = np.random.default_rng(seed)
    sizes = [(260, 300), (240, 240), (320, 250), (300, 420), (250, 250), (480, 270)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(count)]


@dataclass(frozen=True)
class CheckImages:
    """What a self-check scores: k prompts, the queries, and their labels (None: unlabelled)."""

    prompts: list
    queries: list
    labels: list[int] | None = None


def int8_check_images(category: str, is_demo: bool, calibration: Sequence) -> CheckImages:
    """An int8 export's check images: for the demo and one of its synthetic categories, that
    category's normals and generated defects (half each, labelled); otherwise the calibration
    images (the first k the prompts, up to ``INT8_CHECK_QUERIES`` of the rest the queries, all
    of them if fewer; seeded images added where there are no more than k)."""
    if is_demo and category in (*TRAIN_CATEGORIES, *HELD_OUT_CATEGORIES):
        from inctrl.synth import DEFECTS, render

        def image(split: str, label: str, index: int) -> np.ndarray:
            return render(category, split, label, index, seed=CHECK_SEED).image

        half = INT8_CHECK_QUERIES // 2
        prompts = [image("train", "good", i) for i in range(CHECK_SHOTS)]
        defects = [image("test", DEFECTS[i % len(DEFECTS)], i // len(DEFECTS))
                   for i in range(half)]  # fmt: skip
        normals = [image("test", "good", i) for i in range(half)]
        return CheckImages(prompts, normals + defects, [0] * half + [1] * half)
    images = list(calibration)
    if len(images) <= CHECK_SHOTS:  # too few to spare queries: the seeded check images
        images += check_images(CHECK_SHOTS + INT8_CHECK_QUERIES - len(images), CHECK_SEED)
    return CheckImages(images[:CHECK_SHOTS], images[CHECK_SHOTS:][:INT8_CHECK_QUERIES])


def self_check(
    model: InCTRL, folder: Path, category: str, atol: float, images: CheckImages | None = None
) -> ParityReport:
    """The bundle in ``folder`` vs PyTorch on ``images`` (default: seeded images, k = 3
    prompts, a batch of 3)."""
    from inctrl_runtime.detector import Detector

    detector = Detector.open(folder, device="cpu", check_files=False)  # hashed a moment ago
    _check_signatures(detector, model.config)
    if images is None:
        seeded = check_images(CHECK_SHOTS + CHECK_QUERIES, CHECK_SEED)
        images = CheckImages(seeded[:CHECK_SHOTS], seeded[CHECK_SHOTS:])
    return compare(model, detector, category, images.prompts, images.queries, atol,
                   batch_size=CHECK_QUERIES, labels=images.labels)  # fmt: skip


def _check_signatures(detector: Detector, config: InCTRLConfig) -> None:
    """The graphs as the runtime opened them must have the signatures of ``graph_specs``."""
    engines = {"encoder": detector.encoder_engine, "head": detector.head_engine}
    for name, spec in graph_specs(config).items():
        for kind, found, wanted in (
            ("inputs", engines[name].inputs, spec.inputs),
            ("outputs", engines[name].outputs, spec.outputs),
        ):
            expected = tuple(TensorSpec(n, shape, "float32") for n, shape in wanted.items())
            difference = signature_difference(found, expected)
            if difference:
                raise RuntimeError(f"exported {spec.file} has other {kind} ({difference})")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished bundle onto ``out``. An old bundle there is moved aside first, into
    ``.<out>.<pid>.<random>.old/``, and removed once the new one is in place; if that rename
    fails, the old one goes back."""
    if not out.exists():
        os.replace(staging, out)
        return
    aside = new_staging_folder(out, REPLACED)
    old = aside / out.name
    try:
        os.replace(out, old)
        try:
            os.replace(staging, out)
        except BaseException:
            os.replace(old, out)
            raise
    finally:
        if out.exists() or not old.exists():  # never remove the only copy of the old bundle
            shutil.rmtree(aside, ignore_errors=True)
