"""Accuracy-controlled int8 (``inctrl-export onnx --precision int8 --accuracy-data``): the units,
every split quantized with one calibration's ranges, the most-sensitive-first order and its tie
rule, the search; on the tiny model, the split chosen holds on its data, is recorded, is what
``verify`` measures and is chosen again the same; a model whose activations have outlier
channels exits 1; the options' refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from inctrl.model import InCTRL
from inctrl_export.accuracy_control import (
    Int8BringsNothing,
    Measurement,
    search_split,
    sensitivity_order,
    units,
)
from inctrl_export.bundle import AccuracyOptions, export_bundle
from inctrl_export.cli import main
from inctrl_export.quantize import Int8Quantizer, kept_in_fp32, quantized_nodes
from inctrl_export.verify import verify_bundle
from inctrl_runtime.info import bundle_info, info_sections

from helpers import TINY, forge, perturb_heads, run_main, snapshot, synth_data

BOUND = 0.01
# Activations' outlier channels: this many times the rest, in every block (see the test).
OUTLIER = 100.0


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Two synthetic categories in MVTec layout: 8 train/good images each, 14 test images."""
    return synth_data(tmp_path_factory, seed=5, categories=2, images_per_category=8, size=240)


def _categories(data: Path) -> list[str]:
    return sorted(path.name for path in data.iterdir())


@pytest.fixture(scope="module")
def controlled(tmp_path_factory, tiny_checkpoint: Path, labelled: Path):
    """The tiny checkpoint exported in int8 with its split chosen on ``labelled`` (which, for
    a checkpoint without --calibration, also calibrates)."""
    out = tmp_path_factory.mktemp("controlled") / "bundle"
    return export_bundle(out, tiny_checkpoint, [*_categories(labelled), "candle"],
                         precision="int8", accuracy=AccuracyOptions(labelled))  # fmt: skip


def _record(bundle: Path) -> dict:
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest["graphs"]["encoder"]["quantization"]


def _products(tiny_bundle: Path) -> list[str]:
    return quantized_nodes(onnx.load(str(tiny_bundle / "encoder.onnx")))


@pytest.mark.unit
def test_units_are_named_as_keep_fp32_names_them_and_split_the_products(tiny_bundle) -> None:
    products = _products(tiny_bundle)
    blocks = [str(block) for block in range(TINY.vision.layers)]
    kinds = ["in_proj", "out_proj", "c_fc", "c_proj"]
    assert units(products, "kind") == kinds
    assert units(products, "block") == blocks
    assert units(products, "product") == [f"{k}:{b}" for b in blocks for k in kinds]
    for granularity in ("kind", "block", "product"):
        named = [kept_in_fp32(products, [unit]) for unit in units(products, granularity)]
        assert sorted(node for nodes in named for node in nodes) == sorted(products)


@pytest.mark.unit
def test_every_split_is_quantized_with_the_ranges_of_one_calibration(
    tiny_bundle: Path, labelled: Path, tmp_path: Path
) -> None:
    from onnx import numpy_helper

    from inctrl_export.calibration_images import calibration_images, calibration_pixels
    from inctrl_runtime.bundle import Bundle

    preprocessing = Bundle.open(tiny_bundle).preprocessing
    pixels = calibration_pixels(calibration_images(labelled), preprocessing)
    quantizer = Int8Quantizer(tiny_bundle / "encoder.onnx", pixels, "percentile", tmp_path)
    first = quantizer.write(tmp_path / "a.onnx", ["c_proj"])
    ranges = tmp_path / "ranges.json"
    made = (ranges.stat().st_ino, ranges.read_bytes())
    second = quantizer.write(tmp_path / "b.onnx", ["out_proj"])
    assert (ranges.stat().st_ino, ranges.read_bytes()) == made  # read, not calibrated again
    assert first["image_digests"] == second["image_digests"] and first["images"] == 16

    def activation_scales(path: Path) -> dict:
        model = onnx.load(str(path))
        values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
        return {
            node.input[0]: float(values[node.input[1]])
            for node in model.graph.node
            if node.op_type == "QuantizeLinear" and values[node.input[1]].ndim == 0
        }

    a, b = activation_scales(tmp_path / "a.onnx"), activation_scales(tmp_path / "b.onnx")
    shared = set(a) & set(b)  # the inputs of the products int8 in both splits
    assert len(shared) >= 2 * TINY.vision.layers and all(a[name] == b[name] for name in shared)


def _measured(fp32: tuple[str, ...], drift: float, **changes: float) -> Measurement:
    return Measurement(fp32, {"a": 0.0, **changes}, drift)


@pytest.mark.unit
def test_the_most_sensitive_unit_leaves_the_least_drift_and_ties_go_in_graph_order() -> None:
    names = ["in_proj", "out_proj", "c_fc", "c_proj"]
    drifts = [3e-3, 1e-3, 3e-3, 2e-3]  # in_proj and c_fc tie
    alone = [_measured((name,), drift) for name, drift in zip(names, drifts, strict=True)]
    assert sensitivity_order(names, alone) == ["out_proj", "c_proj", "in_proj", "c_fc"]
    # The AUROC does not rank (it moves in steps of a swapped pair); the drift does.
    alone[0] = Measurement(("in_proj",), {"a": 0.5}, 3e-3)
    assert sensitivity_order(names, alone) == ["out_proj", "c_proj", "in_proj", "c_fc"]
    assert sensitivity_order(names[::-1], alone[::-1]) == ["out_proj", "c_proj", "c_fc", "in_proj"]


@pytest.mark.unit
def test_the_search_returns_units_until_every_category_holds_the_bound() -> None:
    names = ["in_proj", "out_proj", "c_fc", "c_proj"]
    chosen = ("out_proj", "c_proj", "in_proj")
    table = {
        split: _measured(split, drift, b=change)
        for split, drift, change in [
            ((), 4e-3, 0.03),
            (("in_proj",), 3e-3, 0.02),
            (("out_proj",), 1e-3, 0.02),
            (("c_fc",), 3.5e-3, -0.005),  # holds, but its drift ranks it last
            (("c_proj",), 2e-3, 0.02),
            (("out_proj", "c_proj"), 8e-4, -0.011),
            (chosen, 5e-4, 0.01),  # |+0.01| holds a bound of 0.01: at most, not below
        ]
    }
    asked: list[tuple[str, ...]] = []

    def measure(split: tuple[str, ...]) -> Measurement:
        asked.append(split)
        return table[split]

    search = search_split(names, measure, BOUND)
    assert search.order == ["out_proj", "c_proj", "in_proj", "c_fc"]
    assert [m.fp32 for m in search.tried] == [("out_proj",), ("out_proj", "c_proj"), chosen]
    assert search.chosen is table[chosen]
    # The first step is the ranking's own measurement: each split is scored once.
    assert asked == [(), *((name,) for name in names), ("out_proj", "c_proj"), chosen]

    asked.clear()
    table[()] = _measured((), 4e-3, b=-0.01)
    assert search_split(names, measure, BOUND).chosen is table[()] and asked == [()]

    table[()] = _measured((), 4e-3, b=0.03)
    table[chosen] = _measured(chosen, 5e-4, b=0.0101)
    with pytest.raises(Int8BringsNothing, match=r"b changes \+0\.0101"):
        search_split(names, measure, BOUND)


@pytest.mark.parity
def test_the_chosen_split_holds_on_its_data_is_recorded_and_verify_measures_it(
    controlled, tiny_checkpoint: Path, labelled: Path, tiny_bundle: Path
) -> None:
    record = _record(controlled.path)
    control = record["accuracy_control"]
    names = _categories(labelled)
    assert record["images"] == 16  # the data's train/good images calibrate
    assert control["data"] == labelled.name and set(control["categories"]) == set(names)
    assert control["categories"][names[0]] == {"queries": 14, "defective": 10}
    assert (control["shots"], control["prompt_seed"], control["granularity"]) == (2, 0, "kind")
    assert control["max_auroc_change"] == BOUND and control["reference"] == "PyTorch fp32"
    # What stayed fp32 is the chosen units' products, and the search's steps say how.
    chosen = control["fp32_units"]
    assert record["fp32_choices"] == chosen
    assert record["fp32_products"] == kept_in_fp32(_products(tiny_bundle), chosen)
    if chosen:
        assert control["order"][: len(chosen)] == chosen
        assert [step["fp32"] for step in control["tried"]] == [
            control["order"][:count] for count in range(1, len(chosen) + 1)
        ]
        because = f"accuracy control on {labelled.name}: every category's AUROC change within"
        assert record["fp32_because"].startswith(because)
    assert all(abs(change) <= BOUND for change in control["auroc_change"].values())
    assert (
        control["auroc_change"]
        == (control["tried"] or [control["every_product_int8"]])[-1]["auroc_change"]
    )
    # verify, scoring the category's own files, measures the same change and passes.
    for name in names:
        report = verify_bundle(controlled.path, tiny_checkpoint, images=labelled / name, shots=2)
        assert report.judges == "auroc" and report.passed
        assert report.auroc["change"] == pytest.approx(control["auroc_change"][name], abs=1e-6)
        assert report.auroc["pytorch"] == pytest.approx(control["fp32_auroc"][name], abs=1e-6)
    row = dict(info_sections(bundle_info(controlled.path))[0])["encoder graph"]
    assert (record["fp32_because"] or "every block product int8") in row


@pytest.mark.parity
def test_the_same_model_and_data_choose_the_same_split(
    controlled, tiny_checkpoint: Path, labelled: Path, tmp_path: Path
) -> None:
    again = export_bundle(tmp_path / "again", tiny_checkpoint, [*_categories(labelled), "candle"],
                          precision="int8", accuracy=AccuracyOptions(labelled),
                          verify=False)  # fmt: skip
    first, second = (_record(path)["accuracy_control"] for path in (controlled.path, again.path))
    assert {**first, "seconds": 0} == {**second, "seconds": 0}


@pytest.mark.parity
def test_verify_passes_the_chosen_split_and_fails_a_damaged_copy(
    controlled, tiny_checkpoint: Path, labelled: Path, tmp_path: Path
) -> None:
    """The same bundle with its activations' scales made a million times coarser (a
    deliberately damaged quantization, its manifest forged to match: every quantized activation
    rounds to 0, whatever the CPU's integer kernels) ranks the parts otherwise."""
    from onnx import numpy_helper

    category = labelled / _categories(labelled)[0]
    assert verify_bundle(controlled.path, tiny_checkpoint, images=category, shots=2).passed
    damaged = Path(shutil.copytree(controlled.path, tmp_path / "damaged"))

    def coarser(path: Path) -> None:
        model = onnx.load(str(path))
        scales = {init.name: init for init in model.graph.initializer}
        for node in model.graph.node:
            scale = scales.get(node.input[1]) if node.op_type == "QuantizeLinear" else None
            if scale is not None and numpy_helper.to_array(scale).ndim == 0:  # an activation's
                original = numpy_helper.to_array(scale)
                coarse = (original * 1e6).astype(original.dtype)
                scale.CopyFrom(numpy_helper.from_array(coarse, scale.name))
        onnx.save(model, str(path))

    forge(damaged, "encoder.onnx", coarser)
    report = verify_bundle(damaged, tiny_checkpoint, images=category, shots=2)
    assert report.judges == "auroc" and abs(report.auroc["change"]) > BOUND and not report.passed
    done = run_main(main, "verify", damaged, "-c", tiny_checkpoint, "--images", category,
                    "-k", "2")  # fmt: skip
    assert done.code == 1 and "PAST the mark 0.01" in " ".join(done.err.split()), done.err


@pytest.mark.cli
def test_a_model_whose_activations_have_outlier_channels_exits_1(
    labelled: Path, tmp_path: Path
) -> None:
    """One channel of every layer norm's output, of the attention's values and of the MLP's
    hidden layer 100 times the others (as in large language models): per-tensor int8 of any
    kind of product rounds the other channels away, so only an all-fp32 encoder keeps the
    AUROC; the export says so, exits 1 and writes nothing."""
    model = perturb_heads(InCTRL(TINY))
    with torch.no_grad():
        for block in model.clip.visual.transformer.resblocks:
            width = block.ln_1.weight.shape[0]
            block.ln_1.weight[0] *= OUTLIER
            block.ln_2.weight[0] *= OUTLIER
            block.attn.in_proj_weight[2 * width] *= OUTLIER  # the first value channel
            block.mlp.c_fc.weight[0] *= OUTLIER
    checkpoint = tmp_path / "outliers.safetensors"
    model.save(checkpoint)
    before = snapshot(tmp_path)
    out = tmp_path / "bundle"
    done = run_main(main, "onnx", "-c", checkpoint, "--out", out, "--precision", "int8",
                    *(w for name in _categories(labelled) for w in ("--category", name)),
                    "--accuracy-data", labelled)  # fmt: skip
    assert done.code == 1, done.err
    said = " ".join(done.err.split())
    assert "error: int8 brings nothing for this model and data" in said
    assert "export --precision fp32, or allow more with --max-auroc-change" in said
    assert "ranking: fp32 c_proj" in said and "most sensitive first:" in said  # its progress
    assert snapshot(tmp_path) == before  # no bundle, no staging left behind


@pytest.mark.cli
@pytest.mark.parametrize(
    "options, said",
    [
        (["--max-auroc-change", "0.02"], "--max-auroc-change: only with --accuracy-data"),
        (["--accuracy-data", "{data}"], "--accuracy-data: only for --precision int8, not fp32"),
        (["--precision", "int8", "--accuracy-data", "{data}", "--keep-fp32", "c_proj"],
         "--keep-fp32 and --accuracy-data both choose the products left in fp32"),
        (["--precision", "int8", "--accuracy-data", "{data}", "--max-auroc-change", "1.5"],
         "--max-auroc-change must be a number in [0, 1), got 1.5"),
        (["--precision", "int8", "--accuracy-data", "{data}", "--accuracy-granularity", "row"],
         "unknown --accuracy-granularity 'row'; choose kind, block, product"),
        (["--precision", "int8", "--accuracy-data", "{data}", "--accuracy-shots", "9"],
         "needs at least 9 images in train/good and some in test/ (found 8 and 14)"),
        (["--precision", "int8", "--accuracy-data", "{empty}"],
         "no MVTec-layout category here"),
    ],
)  # fmt: skip
def test_accuracy_options_are_refused_in_one_line_before_any_work(
    options: list[str], said: str, tiny_checkpoint: Path, labelled: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    paths = {"{data}": str(labelled), "{empty}": str(tmp_path / "empty")}
    names = [w for name in _categories(labelled) for w in ("--category", name)]
    args = ["onnx", "-c", tiny_checkpoint, "--out", tmp_path / "b", *names]
    done = run_main(main, *args, *(paths.get(option, option) for option in options))
    assert done.code == 2 and said in " ".join(done.err.split()), done.err
    assert not (tmp_path / "b").exists()


@pytest.mark.cli
def test_accuracy_data_must_be_categories_of_the_bundle_with_both_labels(
    tiny_checkpoint: Path, labelled: Path, tmp_path: Path
) -> None:
    first, second = _categories(labelled)
    args = ["onnx", "-c", tiny_checkpoint, "--out", tmp_path / "b", "--precision", "int8"]
    done = run_main(main, *args, "--category", first, "--accuracy-data", labelled)
    assert done.code == 2, done.err
    assert f"the bundle has no text prior for '{second}'" in done.err
    assert f"add --category {second}" in " ".join(done.err.split())
    good_only = Path(shutil.copytree(labelled / first, tmp_path / "data" / first))
    for defect in (good_only / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    done = run_main(main, *args, "--category", first, "--accuracy-data", tmp_path / "data")
    assert done.code == 2 and "needs both good and defective test images" in done.err, done.err
