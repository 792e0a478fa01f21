"""int8: static Q/DQ on the intended nodes (the blocks' products, but those --keep-fp32 leaves in
fp32), the manifest's record of its calibration, the refusals, batch invariance, the self-check's
contract (the final score judged) and verify's AUROC mark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from inctrl_export.bundle import CHECK_SHOTS, INT8_CHECK_QUERIES, export_bundle
from inctrl_export.calibration_images import (
    DEMO_IMAGES_PER_CATEGORY,
    MAX_CALIBRATION_IMAGES,
    calibration_images,
    calibration_pixels,
    demo_calibration_images,
)
from inctrl_export.cli import main
from inctrl_export.parity import AUROC_MARKS, OutputDiff, ParityReport
from inctrl_export.quantize import DEFAULT_CALIBRATION_METHOD, PRODUCT_KINDS
from inctrl_export.verify import verify_bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.info import bundle_info, info_sections
from inctrl_runtime.preprocess import Preprocessing, pixel_digest
from inctrl_runtime.results import SCORE_FIELDS

from helpers import TINY, random_images, run_main, synth_data

CALIBRATION_IMAGES = 8
# Mixed precision: every MLP output projection, all of the first block's products and the last
# block's attention input projection in fp32.
KEEP_FP32 = ("c_proj", "0", f"in_proj:{TINY.vision.layers - 1}")
KEPT_NAMES = ("/mlp/c_proj/", "/resblocks.0/", f"/resblocks.{TINY.vision.layers - 1}/attn/MatMul")


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


@pytest.fixture(scope="module")
def mixed_export(tmp_path_factory, tiny_checkpoint: Path, synth: Path):
    """The same export with the KEEP_FP32 products left in fp32."""
    out = tmp_path_factory.mktemp("mixed") / "bundle"
    return export_bundle(out, tiny_checkpoint, ["candle"], precision="int8", calibration=synth,
                         keep_fp32=KEEP_FP32)  # fmt: skip


def _kept(products: set[str]) -> set[str]:
    return {name for name in products if any(part in name for part in KEPT_NAMES)}


def _nodes(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {name: node for node in model.graph.node for name in node.output}


def _array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(t) for t in model.graph.initializer if t.name == name)


def _weight_products(model: onnx.ModelProto) -> set[str]:
    """The MatMul and Gemm nodes of an fp32 graph whose second input is a weight."""
    weights = {t.name for t in model.graph.initializer}
    return {n.name for n in model.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights}  # fmt: skip


def _block_products(fp32_bundle: Path) -> set[str]:
    """Each block's attention in and out projections and its MLP's two products."""
    every = _weight_products(onnx.load(str(fp32_bundle / "encoder.onnx")))
    blocks = {name for name in every if "/resblocks." in name}
    assert len(blocks) == 4 * TINY.vision.layers
    # The embedding projection and the adapter keep fp32 weights.
    assert {"/MatMul", "/adapter/fc/fc.0/MatMul", "/adapter/fc/fc.2/MatMul"} <= every - blocks
    return blocks


def _int8_products(model: onnx.ModelProto) -> set[str]:
    """The products of an int8 graph whose weight and activation are Q/DQ int8, each checked
    for the form TensorRT takes; attention's activation x activation products must be fp32."""
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
    # Every other product, attention's activation x activation ones too, is fp32.
    assert all(producers[i].op_type != "DequantizeLinear" for n in model.graph.node
               if n.op_type in ("MatMul", "Gemm") and n.name not in quantized
               for i in n.input if i in producers)  # fmt: skip
    return quantized


@pytest.mark.unit
def test_qdq_with_zero_points_0_and_per_channel_weights_on_exactly_the_block_products(
    int8_export, tiny_bundle: Path
) -> None:
    model = onnx.load(str(int8_export.path / "encoder.onnx"))
    assert _int8_products(model) == _block_products(tiny_bundle)


@pytest.mark.unit
def test_keep_fp32_leaves_the_products_it_names_in_fp32_and_the_manifest_says_so(
    mixed_export, tiny_bundle: Path
) -> None:
    blocks = _block_products(tiny_bundle)
    kept = _kept(blocks)
    assert len(kept) == TINY.vision.layers + 3 + 1  # c_proj of each, block 0's others, in_proj
    model = onnx.load(str(mixed_export.path / "encoder.onnx"))
    assert _int8_products(model) == blocks - kept
    record = json.loads((mixed_export.path / "manifest.json").read_text())["graphs"]["encoder"]
    record = record["quantization"]
    assert set(record["fp32_products"]) == kept and len(record["fp32_products"]) == len(kept)
    assert record["int8_products"] == len(blocks - kept)
    assert record["fp32_because"] == f"--keep-fp32 c_proj, 0, in_proj:{TINY.vision.layers - 1}"
    assert bundle_info(mixed_export.path)["graphs"]["encoder"]["quantization"]["fp32_products"]
    row = dict(info_sections(bundle_info(mixed_export.path))[0])["encoder graph"]
    assert record["fp32_choices"] == list(KEEP_FP32)
    total = 4 * TINY.vision.layers
    split = f"fp32: {', '.join(KEEP_FP32)} ({len(kept)} of {total} block products)"
    assert f"{split}, chosen by {record['fp32_because']}" in row
    assert mixed_export.report.batch_invariance <= 1e-5


@pytest.mark.unit
@pytest.mark.parametrize(
    "export, int8_products",
    [("int8_export", 4 * TINY.vision.layers), ("mixed_export", 3 * TINY.vision.layers - 4)],
)
def test_onnxruntime_runs_every_quantized_product_as_an_integer_kernel(
    export: str, int8_products: int, request, tmp_path: Path
) -> None:
    """With the runtime's session options, no product is left as a float MatMul behind a
    DequantizeLinear (which would be slower than fp32): the attention input's Transpose moved."""
    import onnxruntime as ort

    from inctrl_runtime.engines.ort import session_options

    options = session_options(precision="int8")
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    path = request.getfixturevalue(export).path / "encoder.onnx"
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    kinds = [node.op_type for node in optimized.graph.node]
    assert kinds.count("MatMulIntegerToFloat") + kinds.count("QGemm") == int8_products
    assert "DequantizeLinear" not in kinds


@pytest.mark.unit
def test_the_manifest_records_the_calibration(int8_export, synth: Path, tiny_bundle: Path) -> None:
    manifest = json.loads((int8_export.path / "manifest.json").read_text())
    record = manifest["graphs"]["encoder"]["quantization"]
    assert manifest["graphs"]["encoder"]["precision"] == "int8"
    assert {k: v for k, v in record.items() if k != "image_digests"} == {
        "format": "qdq", "activations": "int8-symmetric",
        "weights": "int8-symmetric-per-channel", "method": DEFAULT_CALIBRATION_METHOD,
        "images": CALIBRATION_IMAGES, "int8_products": 4 * TINY.vision.layers,
        "fp32_products": [], "fp32_choices": [], "fp32_because": None,
    }  # fmt: skip
    # The digests are the runtime's own of the train/good images, as it preprocesses them.
    detector = Detector.open(int8_export.path)
    normals = sorted((synth / "train" / "good").iterdir())
    assert record["image_digests"] == [pixel_digest(p) for p in detector.pixels(normals)]
    assert "quantize" in manifest["export_seconds"]
    shown = bundle_info(int8_export.path)["graphs"]["encoder"]["quantization"]
    split = {"split": "every block product int8"}
    assert shown == {**{k: v for k, v in record.items() if k != "image_digests"}, **split}
    rows = dict(info_sections(bundle_info(int8_export.path))[0])
    assert "activations int8-symmetric" in rows["encoder graph"]
    assert rows["encoder graph"].endswith("; every block product int8")
    assert f"{DEFAULT_CALIBRATION_METHOD} on {CALIBRATION_IMAGES} images" in rows["encoder graph"]
    fp32 = (tiny_bundle / "encoder.onnx").stat().st_size  # the same checkpoint's fp32 encoder
    assert int8_export.file_bytes["encoder.onnx"] < 0.7 * fp32


@pytest.mark.parity
# Integer products add exactly; the products --keep-fp32 leaves in fp32 round by the batch's
# kernel blocking, as an fp32 bundle's do (text_score, a softmax at logit scale 100, moved by
# 1.3e-6 here and 4.3e-7 on the fp32 demo bundle): no calibration-dependent batch effect.
@pytest.mark.parametrize("export, mark", [("int8_export", 1e-6), ("mixed_export", 1e-5)])
def test_an_image_scores_the_same_alone_and_in_any_batch(export: str, mark: float, request) -> None:
    queries = random_images(6, seed=41, size=[(240, 240), (300, 260)])
    for threads in (None, 1):  # the runtime's session options, default and pinned threads
        detector = Detector.open(request.getfixturevalue(export).path, threads=threads)
        bank = detector.reference(random_images(2, seed=40))
        whole = detector.score_arrays("candle", queries, bank=bank, batch_size=6)
        for batch_size in (1, 2, 4):
            split = detector.score_arrays("candle", queries, bank=bank, batch_size=batch_size)
            for name in SCORE_FIELDS:
                difference = np.abs(getattr(split, name) - getattr(whole, name)).max()
                assert difference <= mark, (threads, batch_size, name, difference)
        # In another batch's company, too.
        mixed = detector.score_arrays("candle", [queries[0], *random_images(3, seed=42)],
                                      bank=bank, batch_size=4)  # fmt: skip
        assert abs(mixed.score[0] - whole.score[0]) <= mark


@pytest.mark.parity
def test_an_unlabelled_int8_self_check_reports_the_drift_and_judges_nothing(int8_export) -> None:
    """A checkpoint's int8 self-check scores its calibration images (all but the k prompts of
    the 8 here: fewer than 32), reports every output's drift and, without labels, judges
    nothing, saying how to."""
    report = int8_export.report
    assert report.precision == "int8" and report.queries == CALIBRATION_IMAGES - CHECK_SHOTS
    judged = {d.name: d.judged for d in report.outputs}
    assert not any(judged.values())
    assert set(judged) == {"bank.patches", "bank.adapted_mean", "text_prior", *SCORE_FIELDS}
    assert report.judges == "nothing" and report.passed and report.auroc is None
    assert report.max_abs_diff == next(d.max_abs for d in report.outputs if d.name == "score")
    assert report.batch_invariance <= 1e-6
    recorded = json.loads((int8_export.path / "manifest.json").read_text())["verification"]
    assert recorded["judges"] == "nothing" and not any(o["judged"] for o in recorded["outputs"])
    lines = " ".join(str(line) for line in report.table().renderables[1:])
    assert "and none were given: nothing is judged" in lines
    assert "inctrl-export verify BUNDLE --images LABELLED_CATEGORY_DIR" in lines


@pytest.mark.unit
def test_an_unjudged_output_past_the_mark_does_not_fail_but_the_auroc_change_does() -> None:
    def report(change: float | None, precision: str = "int8") -> ParityReport:
        judged = precision != "int8"  # int8's outputs are reported, not judged
        outputs = [OutputDiff("score", (4,), 5e-3, 1e-2, True, judged),
                   OutputDiff("image_residual_score", (4,), 8e-2, 0.3, False, False)]  # fmt: skip
        auroc = None if change is None else {"pytorch": 0.9, "bundle": 0.9 + change,
                                              "change": change}  # fmt: skip
        mark = AUROC_MARKS.get(precision) if auroc else None
        return ParityReport(precision, "candle", 2, 4, 4, 1e-2, "onnxruntime-cpu", outputs,
                            auroc=auroc, auroc_mark=mark)  # fmt: skip

    assert report(None).passed and report(-0.01).passed and report(0.004).passed
    assert report(None).judges == "nothing" and report(0.004).judges == "auroc"
    assert not report(-0.0101).passed and not report(0.02).passed  # a rise is another ranking
    assert report(0.02).to_dict()["auroc_mark"] == AUROC_MARKS["int8"] == 0.01
    # A float precision's AUROC change is reported, not judged (its scores are, each).
    assert report(0.05, "fp16").passed and report(0.05, "fp16").auroc_mark is None


@pytest.mark.parity
def test_verify_judges_the_auroc_change_on_labelled_images(
    int8_export, tiny_checkpoint: Path, synth: Path
) -> None:
    report = verify_bundle(int8_export.path, tiny_checkpoint, images=synth, shots=2)
    assert report.auroc_mark == 0.01 and set(report.auroc) == {"pytorch", "bundle", "change"}
    assert report.judges == "auroc"
    assert report.passed == (abs(report.auroc["change"]) <= 0.01)
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
    done = run_main(main, *fp32, "--calibration", tmp_path, "--calibration-method", "entropy",
                    "--keep-fp32", "c_fc")  # fmt: skip
    done.assert_refused(
        "--calibration, --calibration-method, --keep-fp32: only for --precision int8"
    )
    assert not out.exists() and not list(tmp_path.glob(".out*"))


@pytest.mark.cli
def test_keep_fp32_refuses_a_choice_that_names_no_product_or_every_one(
    tiny_checkpoint: Path, synth: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    int8 = ("onnx", "-c", tiny_checkpoint, "--category", "candle", "--out", out,
            "--precision", "int8", "--calibration", synth, "--keep-fp32", "c_fc")  # fmt: skip
    for choice in ("mlp/c_proj", "c_proj:last", "", "qkv:1"):  # before any work
        run_main(main, *int8, "--keep-fp32", choice).assert_refused(
            f"--keep-fp32 {choice!r}: give a product kind (in_proj, out_proj, c_fc, c_proj)"
        )
    # Known once the graph is traced: the blocks there are, and what would be left in int8.
    layers = TINY.vision.layers
    late = {(str(layers),): f"no such product; the model has blocks 0 to {layers - 1}",
            ("in_proj", "out_proj", "c_proj"): "keeps every block product in fp32"}  # fmt: skip
    for choices, phrase in late.items():
        done = run_main(main, *int8, *(o for c in choices for o in ("--keep-fp32", c)))
        assert done.code == 2 and "Traceback" not in done.err, done.err
        assert done.err.splitlines()[-1].startswith("error: --keep-fp32")
        assert phrase in done.err.splitlines()[-1], done.err
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
    # the demo's self-check: 32 of its own images, half generated defects, AUROC judged
    report = result.report
    assert report.queries == INT8_CHECK_QUERIES == 32 and report.judges == "auroc"
    assert report.passed == (abs(report.auroc["change"]) <= 0.01)


@pytest.mark.cli
def test_the_help_states_the_int8_options_and_contract() -> None:
    import typer

    from inctrl_export.cli import app

    commands = typer.main.get_command(app).commands
    helps = {o.name: o.help for o in commands["onnx"].params if o.param_type_name == "option"}
    assert f"at most {MAX_CALIBRATION_IMAGES} are used" in helps["calibration"]
    assert f"{DEFAULT_CALIBRATION_METHOD} (default" in helps["calibration_method"]
    assert all(kind in helps["keep_fp32"] for kind in PRODUCT_KINDS)
    assert "most sensitive first" in helps["accuracy_data"] and "exit 1" in helps["accuracy_data"]
    assert "Default: 0.01" in helps["max_auroc_change"]
    assert "int8's outputs are reported only" in helps["atol"]
    verify = {o.name: o.help for o in commands["verify"].params if o.param_type_name == "option"}
    assert f"int8's change is judged: at most {AUROC_MARKS['int8']:g}" in verify["images"]
