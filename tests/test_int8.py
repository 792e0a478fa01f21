"""int8: static Q/DQ on the intended nodes, the manifest's record of its calibration, the refusals,
batch invariance, the self-check's contract (the final score judged) and verify's AUROC mark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import TINY, random_images, run_main, synth_data
from onnx import numpy_helper

from inctrl_export.bundle import export_bundle
from inctrl_export.cli import main
from inctrl_export.parity import AUROC_MARKS, DEFAULT_ATOL, OutputDiff, ParityReport
from inctrl_export.quantize import (
    DEFAULT_CALIBRATION_METHOD,
    DEMO_IMAGES_PER_CATEGORY,
    MAX_CALIBRATION_IMAGES,
    calibration_images,
    calibration_pixels,
    demo_calibration_images,
)
from inctrl_export.verify import verify_bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.info import bundle_info, info_sections
from inctrl_runtime.preprocess import Preprocessing, pixel_digest
from inctrl_runtime.results import SCORE_FIELDS

CALIBRATION_IMAGES = 8


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    """One synthetic category in MVTec layout: 8 train/good images, labelled test images."""
    root = synth_data(tmp_path_factory, seed=5, categories=1,
                      images_per_category=CALIBRATION_IMAGES, size=240)  # fmt: skip
    (category,) = root.iterdir()
    return category


@pytest.fixture(scope="module")
def int8_export(tmp_path_factory, tiny_checkpoint: Path, synth: Path):
    """The tiny checkpoint exported in int8, calibrated on the synthetic category's normals,
    with its self-check."""
    out = tmp_path_factory.mktemp("int8") / "bundle"
    return export_bundle(out, tiny_checkpoint, [synth.name, "candle"], precision="int8",
                         calibration=synth)  # fmt: skip


def _nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output}


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _weight_products(model: onnx.ModelProto) -> set[str]:
    """The MatMul and Gemm nodes of an fp32 graph whose second input is a weight."""
    weights = {t.name for t in model.graph.initializer}
    return {n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights}  # fmt: skip


@pytest.mark.unit
def test_qdq_with_zero_points_0_and_per_channel_weights_on_exactly_the_block_products(
    int8_export, tiny_bundle: Path
) -> None:
    fp32 = onnx.load(str(tiny_bundle / "encoder.onnx"))
    every = _weight_products(fp32)
    intended = {name for name in every if "/resblocks." in name}
    # Each block's attention in and out projections and its MLP's two; the embedding projection
    # and the adapter keep fp32 weights.
    assert len(intended) == 4 * TINY.vision.layers
    assert {"/MatMul", "/adapter/fc/fc.0/MatMul", "/adapter/fc/fc.2/MatMul"} <= every - intended

    model = onnx.load(str(int8_export.path / "encoder.onnx"))
    producers = _nodes(model)
    quantized = set()
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        weight = producers.get(node.input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            continue
        quantized.add(node.name)
        # The weight: int8, zero points 0, one scale per output channel (axis 1 of a MatMul's
        # K x N weight, axis 0 of a Gemm's transposed N x K one).
        values, scale, zero = (_array(model, name) for name in weight.input)
        channels = values.shape[1] if node.op_type == "MatMul" else values.shape[0]
        assert values.dtype == np.int8 and zero.dtype == np.int8 and not zero.any()
        assert scale.shape == (channels,) and (scale > 0).all()
        # The activation: one calibrated scale, int8 with zero point 0.
        activation = producers[node.input[0]]
        assert activation.op_type == "DequantizeLinear"
        scale, zero = (_array(model, name) for name in activation.input[1:])
        assert scale.shape == () and scale > 0 and zero.dtype == np.int8 and zero == 0
        assert producers[activation.input[0]].op_type == "QuantizeLinear"
    assert quantized == intended
    # Attention's activation x activation products stay fp32.
    assert all(producers[i].op_type != "DequantizeLinear" for n in model.graph.node
               if n.op_type == "MatMul" and n.name not in intended
               for i in n.input if i in producers)  # fmt: skip


@pytest.mark.unit
def test_onnxruntime_runs_every_quantized_product_as_an_integer_kernel(
    int8_export, tmp_path: Path
) -> None:
    """With the runtime's session options, no product is left as a float MatMul behind a
    DequantizeLinear (which would be slower than fp32): the attention input's Transpose moved."""
    import onnxruntime as ort

    from inctrl_runtime.engines.ort import session_options

    options = session_options(precision="int8")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_export.path / "encoder.onnx"), options,
                         providers=["CPUExecutionProvider"])  # fmt: skip
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    kinds = [node.op_type for node in optimized.graph.node]
    assert kinds.count("MatMulIntegerToFloat") + kinds.count("QGemm") == 4 * TINY.vision.layers
    assert "DequantizeLinear" not in kinds


@pytest.mark.unit
def test_the_manifest_records_the_calibration(int8_export, synth: Path, tiny_bundle: Path) -> None:
    manifest = json.loads((int8_export.path / "manifest.json").read_text())
    record = manifest["graphs"]["encoder"]["quantization"]
    assert manifest["graphs"]["encoder"]["precision"] == "int8"
    assert {k: v for k, v in record.items() if k != "image_digests"} == {
        "format": "qdq", "activations": "int8-symmetric",
        "weights": "int8-symmetric-per-channel", "method": DEFAULT_CALIBRATION_METHOD,
        "images": CALIBRATION_IMAGES,
    }  # fmt: skip
    # The digests are the runtime's own of the train/good images, as it preprocesses them.
    detector = Detector.open(int8_export.path)
    normals = sorted((synth / "train" / "good").iterdir())
    assert record["image_digests"] == [pixel_digest(p) for p in detector.pixels(normals)]
    assert "quantize" in manifest["export_seconds"]
    shown = bundle_info(int8_export.path)["graphs"]["encoder"]["quantization"]
    assert shown == {k: v for k, v in record.items() if k != "image_digests"}
    rows = dict(info_sections(bundle_info(int8_export.path))[0])
    assert "activations int8-symmetric" in rows["encoder graph"]
    assert f"{DEFAULT_CALIBRATION_METHOD} on {CALIBRATION_IMAGES} images" in rows["encoder graph"]
    fp32 = (tiny_bundle / "encoder.onnx").stat().st_size  # the same checkpoint's fp32 encoder
    assert int8_export.file_bytes["encoder.onnx"] < 0.7 * fp32


@pytest.mark.parity
def test_an_image_scores_the_same_alone_and_in_any_batch(int8_export) -> None:
    queries = random_images(6, seed=41, size=[(240, 240), (300, 260)])
    for threads in (None, 1):  # the runtime's session options, default and pinned threads
        detector = Detector.open(int8_export.path, threads=threads)
        bank = detector.reference(random_images(2, seed=40))
        whole = detector.score_arrays("candle", queries, bank=bank, batch_size=6)
        for batch_size in (1, 2, 4):
            split = detector.score_arrays("candle", queries, bank=bank, batch_size=batch_size)
            for name in SCORE_FIELDS:
                difference = np.abs(getattr(split, name) - getattr(whole, name)).max()
                assert difference <= 1e-6, (threads, batch_size, name, difference)
        # In another batch's company, too.
        mixed = detector.score_arrays("candle", [queries[0], *random_images(3, seed=42)],
                                      bank=bank, batch_size=4)  # fmt: skip
        assert abs(mixed.score[0] - whole.score[0]) <= 1e-6


@pytest.mark.parity
def test_the_self_check_judges_the_final_score_at_1e_2(int8_export) -> None:
    report = int8_export.report
    assert report.precision == "int8" and report.atol == DEFAULT_ATOL["int8"] == 1e-2
    judged = {d.name: d.judged for d in report.outputs}
    assert [name for name, is_judged in judged.items() if is_judged] == ["score"]
    assert set(judged) == {"bank.patches", "bank.adapted_mean", "text_prior", *SCORE_FIELDS}
    assert report.passed == (report.max_abs_diff <= 1e-2)
    assert report.max_abs_diff == next(d.max_abs for d in report.outputs if d.name == "score")
    assert report.batch_invariance <= 1e-6
    recorded = json.loads((int8_export.path / "manifest.json").read_text())["verification"]
    assert [o["name"] for o in recorded["outputs"] if o["judged"]] == ["score"]
    lines = "\n".join(str(line) for line in report.table().renderables[1:])
    assert "the int8 contract judges score; the rest is reported" in lines


@pytest.mark.unit
def test_an_unjudged_output_past_the_mark_does_not_fail_but_the_auroc_change_does() -> None:
    def report(change: float | None, precision: str = "int8") -> ParityReport:
        outputs = [OutputDiff("score", (4,), 5e-3, 1e-2, True, True),
                   OutputDiff("image_residual_score", (4,), 8e-2, 0.3, False, False)]  # fmt: skip
        auroc = None if change is None else {"pytorch": 0.9, "bundle": 0.9 + change,
                                              "change": change}  # fmt: skip
        mark = AUROC_MARKS.get(precision) if auroc else None
        return ParityReport(precision, "candle", 2, 4, 4, 1e-2, "onnxruntime-cpu", outputs,
                            auroc=auroc, auroc_mark=mark)  # fmt: skip

    assert report(None).passed and report(-0.01).passed and report(0.004).passed
    assert not report(-0.0101).passed and not report(0.02).passed
    assert report(0.02).to_dict()["auroc_mark"] == AUROC_MARKS["int8"] == 0.01
    # A float precision's AUROC change is reported, not judged (its scores are, each).
    assert report(0.05, "fp16").passed and report(0.05, "fp16").auroc_mark is None


@pytest.mark.parity
def test_verify_judges_the_auroc_change_on_labelled_images(
    int8_export, tiny_checkpoint: Path, synth: Path
) -> None:
    report = verify_bundle(int8_export.path, tiny_checkpoint, images=synth, shots=2)
    assert report.auroc_mark == 0.01 and set(report.auroc) == {"pytorch", "bundle", "change"}
    score = next(d for d in report.outputs if d.name == "score")
    assert report.passed == (score.max_abs <= 1e-2 and abs(report.auroc["change"]) <= 0.01)
    done = run_main(main, "verify", int8_export.path, "-c", tiny_checkpoint, "--images", synth,
                    "-k", "2", "--json", "-")  # fmt: skip
    assert done.code == (0 if report.passed else 1), done.err
    printed = json.loads(done.out)
    assert printed["auroc"] == report.auroc and printed["auroc_mark"] == 0.01
    printed_lines = " ".join(done.err.split())  # as rich wrapped them
    assert "image AUROC: pytorch" in printed_lines and "the mark 0.01)" in printed_lines
    if not report.auroc_holds:
        assert "image AUROC changed by" in printed_lines


@pytest.mark.cli
def test_int8_of_a_real_checkpoint_needs_calibration_images(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    int8 = ("onnx", "-c", tiny_checkpoint, "--category", "candle", "--out", out,
            "--precision", "int8")  # fmt: skip
    run_main(main, *int8).assert_refused(
        "--precision int8 needs --calibration DIR", "normal images", "train/good"
    )
    (tmp_path / "empty").mkdir()
    refusals = {
        (tmp_path / "empty",): "no images directly in it",
        (tmp_path / "none",): "no such folder of images",
        (tmp_path, "--calibration-method", "mse"): "choose minmax, percentile, entropy",
    }
    for options, phrase in refusals.items():
        run_main(main, *int8, "--calibration", *options).assert_refused(phrase)
    fp32 = ("onnx", "-c", tiny_checkpoint, "--category", "candle", "--out", out)
    done = run_main(main, *fp32, "--calibration", tmp_path, "--calibration-method", "entropy")
    done.assert_refused("--calibration, --calibration-method: only for --precision int8")
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.unit
def test_which_images_of_a_folder_calibrate(synth: Path, tmp_path: Path) -> None:
    normals = sorted((synth / "train" / "good").iterdir())
    assert calibration_images(synth) == normals  # a category: its train/good
    assert calibration_images(synth.parent) == normals  # a data set: each category's
    assert calibration_images(synth / "train" / "good") == normals  # a folder of images
    many = list(range(3 * MAX_CALIBRATION_IMAGES))
    thinned = calibration_images(many)
    assert len(thinned) == MAX_CALIBRATION_IMAGES and thinned[0] == 0 and thinned[-1] == many[-1]


@pytest.mark.parity
def test_the_demo_calibrates_on_its_own_synthetic_normals(tmp_path: Path) -> None:
    from inctrl.demo import HELD_OUT_CATEGORIES, TRAIN_CATEGORIES

    images = demo_calibration_images()
    count = DEMO_IMAGES_PER_CATEGORY * len((*TRAIN_CATEGORIES, *HELD_OUT_CATEGORIES))
    assert len(images) == count and 24 <= count <= 60  # a few dozen
    again = demo_calibration_images()
    assert all(np.array_equal(a, b) for a, b in zip(images, again, strict=True))
    digests = [pixel_digest(p) for p in calibration_pixels(images, Preprocessing())]
    assert len(set(digests)) == count  # all different
    result = export_bundle(tmp_path / "demo", precision="int8", calibration_method="minmax")
    manifest = json.loads((result.path / "manifest.json").read_text())
    record = manifest["graphs"]["encoder"]["quantization"]
    assert record["method"] == "minmax" and record["image_digests"] == digests
    assert result.report.passed


@pytest.mark.cli
def test_the_help_states_the_int8_options_and_contract() -> None:
    import typer

    from inctrl_export.cli import app

    commands = typer.main.get_command(app).commands
    helps = {o.name: o.help for o in commands["onnx"].params if o.param_type_name == "option"}
    assert f"at most {MAX_CALIBRATION_IMAGES} are used" in helps["calibration"]
    assert f"{DEFAULT_CALIBRATION_METHOD} (default" in helps["calibration_method"]
    assert "for int8 the final score within 1e-2" in helps["atol"]
    verify = {o.name: o.help for o in commands["verify"].params if o.param_type_name == "option"}
    assert f"int8's change is judged: at most {AUROC_MARKS['int8']:g}" in verify["images"]
