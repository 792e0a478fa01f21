"""inctrl-bench --eval DATA: image AUROC, the pixel metrics and the final score's drift against
torch-fp32 in every row, on labelled MVTec-layout data the tests generate; the refusals of data
that is not."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inctrl_bench.artifacts import Artifacts
from inctrl_bench.suite import BenchSettings, run_bench
from inctrl_runtime.errors import InputError

from helpers import TINY, synth_data

PROVIDER = ["onnxruntime-tensorrt-fp32", "onnxruntime-tensorrt-fp16"]
# The accuracy record of a row benched with --eval.
ACCURACY_KEYS = {
    "data",
    "path",
    "images",
    "shots",
    "precision",
    "auroc",
    "mean_auroc",
    "pixel_auroc",
    "mean_pixel_auroc",
    "aupro",
    "mean_aupro",
    "aupro_limit",
    "calibration",
    "regions",
    "pixel_reason",
    "drift_max_abs",
    "drift_mean_abs",
    "drift_reference",
    "drift_reason",
}


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    """Labelled data, small: 2 categories of 4 train/good and 7 test images (2 normal), 64 px."""
    return synth_data(tmp_path_factory, categories=2, images_per_category=4, size=64)


@pytest.mark.unit
def test_auroc_is_scikit_learns_with_ties() -> None:
    from inctrl.metrics import image_metrics
    from inctrl_bench.accuracy import auroc

    rng = np.random.default_rng(0)
    for _ in range(20):
        labels = rng.permutation([0] * 7 + [1] * 5)
        scores = rng.integers(0, 4, 12) / 4  # few values: many ties, across the labels too
        assert auroc(labels, scores) == pytest.approx(image_metrics(labels, scores)[0], abs=1e-12)
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auroc([0, 1], [0.5, 0.5]) == 0.5 and auroc([1, 0], [0.9, 0.1]) == 1.0


@pytest.mark.unit
def test_per_category_columns_are_cut_into_tables_that_fit() -> None:
    from inctrl_bench.report import _column_groups

    names = ["synth_fabric", "synth_washer", "abc", "synth_stripes"]  # 14, 14, 7 and 15 wide
    assert _column_groups(names, 60) == [names]
    assert _column_groups(names, 35) == [names[:3], names[3:]]
    assert _column_groups(["a_very_long_category_name"], 10) == [["a_very_long_category_name"]]


@pytest.mark.unit
def test_eval_data_prompts_and_queries(eval_data: Path) -> None:
    from inctrl_bench.accuracy import describe_data, load_eval_data

    data = load_eval_data(eval_data, 2)
    assert data.name == "synth" and [c.name for c in data.categories] == [
        "synth_fabric",
        "synth_washer",
    ]
    fabric = data.categories[0]
    train_good = sorted(str(p) for p in (eval_data / "synth_fabric/train/good").glob("*.png"))
    assert list(fabric.normals) == train_good and len(train_good) == 4
    assert len(fabric.queries) == 7 and fabric.labels.count(1) == 5  # every test image
    assert all("/test/" in query for query in fabric.queries)
    assert fabric.masks[0] is None and fabric.masks[-1].endswith("_mask.png") and fabric.has_masks
    record = data.to_dict()
    assert record["categories"]["synth_fabric"]["prompts"] == train_good[:2]  # the first k
    assert record["categories"]["synth_fabric"]["masks"] == 5
    assert (record["images"], record["anomalous"], record["shots"]) == (14, 10, 2)
    one = load_eval_data(eval_data / "synth_washer", 1)  # a category folder is the data itself
    assert [c.name for c in one.categories] == ["synth_washer"] and one.images == 7
    assert describe_data(one.to_dict()).startswith(f"synth_washer ({eval_data / 'synth_washer'})")
    assert "7 test images (5 anomalous) in 1 category; k=1" in describe_data(one.to_dict())


@pytest.mark.unit
def test_pixel_accuracy_of_hand_made_outputs(eval_data: Path, tmp_path) -> None:
    """``Accuracy.of`` on made-up outputs: pixel metrics are ``inctrl_runtime.pixel_metrics``' on
    the frames and masks, region thresholds the conformal ones of the map maxima; a category
    without masks has none and says why."""
    import torch

    from inctrl_bench.accuracy import REGION_FPRS, Accuracy, EvalOutputs, host_array, load_eval_data
    from inctrl_runtime.pixel_metrics import PixelLabels, region_point

    _copy_category(eval_data, "synth_washer", tmp_path / "data" / "plain", ("ground_truth",))
    _copy_category(eval_data, "synth_fabric", tmp_path / "data" / "masked")
    data = load_eval_data(tmp_path / "data", 2)
    assert [c.has_masks for c in data.categories] == [True, False]  # masked, plain
    rng = np.random.default_rng(0)
    outputs = {
        c.name: EvalOutputs(
            rng.random(7),
            rng.random((7, 225)).astype(np.float32),
            np.sort(rng.random(19).astype(np.float32)),  # n = 19: thresholds at 0.05 and 0.1
            240,
        )
        for c in data.categories
    }
    accuracy = Accuracy.of(data, "fp32", outputs)
    masked, plain = data.categories
    pixels = PixelLabels.of(masked.queries, masked.labels, masked.masks, 240).values(
        outputs["masked"].maps
    )
    assert accuracy.pixel_auroc == {"masked": pixels.auroc(), "plain": None}
    assert accuracy.aupro == {"masked": pixels.aupro(), "plain": None}
    assert accuracy.mean_aupro == pixels.aupro() and accuracy.aupro_limit == 0.3
    assert accuracy.calibration == {"masked": 19, "plain": 19}
    assert accuracy.pixel_reason.startswith("no ground-truth masks (ground_truth/<defect>/")
    assert accuracy.pixel_reason.endswith(" in plain: no pixel metrics there")
    for name, values in (("masked", pixels), ("plain", None)):
        maxima = outputs[name].map_maxima
        want = [region_point(maxima, values, alpha)._asdict() for alpha in REGION_FPRS]
        assert accuracy.regions[name] == want
    at_05, at_10 = accuracy.regions["masked"]
    assert at_10["region_threshold"] < at_05["region_threshold"]
    assert 0 <= at_05["region_flag_rate"] <= at_10["region_flag_rate"] <= 1
    assert 0 <= at_05["region_recall"] <= at_10["region_recall"] <= 1
    assert accuracy.regions["plain"][0]["region_recall"] is None
    assert accuracy.region_means(1) == (at_10["region_recall"], at_10["region_flag_rate"])
    half = torch.tensor([0.5, 0.25], dtype=torch.float16)  # a torch row's output, made host
    assert host_array(half).dtype == np.float32 and host_array(half).tolist() == [0.5, 0.25]


def _copy_category(data: Path, category: str, to: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of one category of ``data`` at ``to`` without the subfolders ``drop``."""
    shutil.copytree(data / category, to)
    for sub in drop:
        shutil.rmtree(to / sub)
    return to


@pytest.mark.unit
@pytest.mark.parametrize(
    ("make", "shots", "message"),
    [
        (lambda data, tmp: tmp / "none", 1, "none: no such folder; give labelled MVTec-layout"),
        (lambda data, tmp: data / "synth_fabric/train/good", 1, "no MVTec-layout category in it"),
        (
            lambda data, tmp: _copy_category(data, "synth_fabric", tmp / "c", ("test",)),
            1,
            "found 4 train/good, 0 normal and 0 anomalous",
        ),
        (
            lambda data, tmp: _copy_category(data, "synth_fabric", tmp / "c", ("test/good",)),
            1,
            "found 4 train/good, 0 normal and 5 anomalous",
        ),
        (lambda data, tmp: data, 5, "needs at least 5 train/good images (k, the smallest"),
        (
            lambda data, tmp: _copy_category(data, "synth_fabric", tmp / "a b"),
            1,
            "category name 'a b' is not usable",
        ),
    ],
)
def test_eval_data_that_is_not_labelled_mvtec_layout_is_refused(
    make, shots: int, message: str, eval_data: Path, tmp_path
) -> None:
    from inctrl_bench.accuracy import load_eval_data

    folder = make(eval_data, tmp_path)
    with pytest.raises(InputError, match=re.escape(message)) as refused:
        load_eval_data(folder, shots)
    assert str(refused.value).startswith("--eval ") and "\n" not in str(refused.value)


def _row(printed: str, table: str, name: str) -> list[str]:
    """The cells of row ``name`` in the printed table whose title starts with ``table``."""
    lines = printed.splitlines()
    after = lines[next(i for i, line in enumerate(lines) if line.startswith(table)) :]
    return next(line for line in after if line.lstrip().startswith(name + " ")).split()


@pytest.mark.cli
def test_eval_scores_every_row_that_runs(tiny_checkpoint: Path, eval_data: Path, tmp_path) -> None:
    from inctrl.loading import load_model
    from inctrl.metrics import image_metrics
    from inctrl_bench.accuracy import load_eval_data
    from inctrl_runtime.pixel_metrics import PixelLabels

    settings = BenchSettings(
        checkpoint=tiny_checkpoint,
        backends=("authors", "torch-fp32", "onnxruntime-cpu"),
        batches=(4,),
        shots=(2,),
        repeats=1,
        eval_data=eval_data,
        keep_fp32=("c_proj",),
    )
    assert "--eval" in settings.command_line()
    assert "--keep-fp32 c_proj" in settings.command_line()
    report = run_bench(settings, tmp_path / "bench.json", tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["eval_data"]["name"] == "synth" and record["eval_data"]["shots"] == 2
    ran = {name: b for name, b in record["backends"].items() if b["available"]}
    assert set(ran) >= {"authors", "torch-fp32", "onnxruntime-cpu-fp32"}
    for name, backend in record["backends"].items():
        accuracy = backend["accuracy"]
        if not backend["available"]:
            assert accuracy is None, name
            continue
        assert set(accuracy) == ACCURACY_KEYS
        assert (accuracy["data"], accuracy["images"], accuracy["shots"]) == ("synth", 14, 2)
        assert accuracy["precision"] == backend["precision"]
        assert set(accuracy["auroc"]) == {"synth_fabric", "synth_washer"}
        assert accuracy["mean_auroc"] == pytest.approx(np.mean(list(accuracy["auroc"].values())))
        assert accuracy["drift_reference"] == "torch-fp32 on cpu" and not accuracy["drift_reason"]
        assert 0 <= accuracy["drift_mean_abs"] <= accuracy["drift_max_abs"], name
        # Masks in both categories; 2 train/good images left to calibrate: no thresholds.
        assert accuracy["pixel_reason"] is None and 0 < accuracy["mean_pixel_auroc"] < 1
        assert all(0 <= value <= 1 for value in accuracy["aupro"].values())
        assert accuracy["calibration"] == {"synth_fabric": 2, "synth_washer": 2}
        assert [p["region_threshold"] for p in accuracy["regions"]["synth_fabric"]] == [None] * 2
    assert ran["torch-fp32"]["accuracy"]["drift_max_abs"] == 0.0
    assert ran["onnxruntime-cpu-fp32"]["accuracy"]["drift_max_abs"] < 1e-4
    assert ran["authors"]["accuracy"]["drift_max_abs"] < 1e-4  # same weights, batch 1
    # int8 of a real checkpoint: calibrated on the data's train/good images, 4 per category.
    int8 = ran["onnxruntime-cpu-int8"]
    assert int8["quantization"]["images"] == 8 and int8["quantization"]["format"] == "qdq"
    # Its split: --keep-fp32's, named in the record and in its rows.
    assert int8["quantization"]["fp32_choices"] == ["c_proj"]
    split = f"fp32: c_proj ({TINY.vision.layers} of {4 * TINY.vision.layers} block products)"
    assert int8["quantization"]["split"] == split
    assert int8["accuracy"]["drift_max_abs"] < 1e-1
    assert not any("random camera frames" in note for note in record["notes"])

    # torch-fp32's AUROC is the model's own, prompts the first k of train/good, every test image.
    model, data = load_model(tiny_checkpoint), load_eval_data(eval_data, 2)
    for category in data.categories:
        bank = model.reference(list(category.normals[:2]))
        scores = model.score(list(category.queries), bank, model.text_prior(category.name))
        want, _ = image_metrics(category.labels, scores.score.double().numpy())
        assert ran["torch-fp32"]["accuracy"]["auroc"][category.name] == pytest.approx(want)
        labels = PixelLabels.of(category.queries, category.labels, category.masks, 240)
        pixels = labels.values(scores.patch_residual_map.numpy())
        assert ran["torch-fp32"]["accuracy"]["pixel_auroc"][category.name] == pixels.auroc()
        assert ran["torch-fp32"]["accuracy"]["aupro"][category.name] == pixels.aupro()

    import io

    from rich.console import Console

    from inctrl_bench.report import print_report

    console = Console(file=io.StringIO(), width=80)
    print_report(report, console)
    printed = console.file.getvalue()
    words = " ".join(printed.split())  # the header's long lines wrap at 80 columns
    assert f"accuracy data: synth ({eval_data}): 14 test images (10 anomalous) in 2" in words
    fp32 = ran["onnxruntime-cpu-fp32"]["accuracy"]
    cells = _row(printed, "Accuracy on synth (14 test images, k=2)", "onnxruntime-cpu-fp32")
    assert cells[1:4] == ["fp32", f"{fp32['mean_auroc']:.3f}", f"{min(fp32['auroc'].values()):.3f}"]
    assert cells[4:] == [f"{fp32['drift_max_abs']:.1e}", f"{fp32['drift_mean_abs']:.1e}"]
    assert _row(printed, "Accuracy on", "torch-fp32")[4:] == ["0.0e+00", "0.0e+00"]
    pixel_cells = _row(printed, "Pixels on synth", "onnxruntime-cpu-fp32")
    assert pixel_cells[1:] == [
        f"{fp32['mean_pixel_auroc']:.3f}",
        f"{fp32['mean_aupro']:.3f}",
        "-",
        "-",
    ]
    int8_row = _row(printed, "Accuracy on", "onnxruntime-cpu-int8")
    lines = printed.splitlines()
    wrapped = lines[lines.index(next(line for line in lines if line.split() == int8_row)) + 1]
    assert int8_row[1:3] == ["int8,", "fp32"] and wrapped.split() == ["c_proj"]  # 80 columns
    assert f"split: {split}, chosen by --keep-fp32 c_proj" in words
    per_category = _row(printed, "Image AUROC per category of synth", "onnxruntime-cpu-fp32")
    assert per_category[1:] == [f"{fp32['auroc'][c]:.3f}" for c in ("synth_fabric", "synth_washer")]
    assert max(len(line) for line in printed.splitlines()) <= 80


@pytest.mark.cli
def test_drift_against_torch_fp32_run_on_the_eval_images_alone(
    tiny_checkpoint: Path, eval_data: Path
) -> None:
    settings = BenchSettings(
        checkpoint=tiny_checkpoint,
        backends=("onnxruntime-cpu-fp32",),
        batches=(2,),
        shots=(1,),
        repeats=1,
        eval_data=eval_data / "synth_washer",
    )
    report = run_bench(settings)
    accuracy = report.backends[0].accuracy
    assert accuracy.drift_reference == "torch-fp32 on cpu" and accuracy.drift_reason is None
    assert 0 <= accuracy.drift_mean_abs <= accuracy.drift_max_abs < 1e-4
    assert (accuracy.data, accuracy.images, accuracy.shots) == ("synth_washer", 7, 1)
    assert any("run on the --eval images only (not a benched row)" in n for n in report.notes)
    assert report.to_dict()["backends"]["onnxruntime-cpu-fp32"]["accuracy"]["auroc"] == {
        "synth_washer": accuracy.mean_auroc
    }


@pytest.mark.unit
def test_a_given_bundle_without_the_eval_categories_is_refused(
    tiny_bundle: Path, eval_data: Path, tmp_path
) -> None:
    from inctrl_bench.accuracy import load_eval_data

    data = load_eval_data(eval_data, 1)
    with pytest.raises(InputError) as refused:
        Artifacts(tmp_path, bundle=tiny_bundle, data=data)
    message = str(refused.value)
    assert "has no text prior for the --eval data's synth_fabric, synth_washer (it has " in message
    assert "candle, metal_nut); export them (inctrl-export onnx --category" in message


# Runs inctrl-bench in a process where importing torch fails, and says whether it got imported.
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked for this test")

sys.meta_path.insert(0, NoTorch())
from inctrl_bench.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("exit", done.code, "torch" in sys.modules)
"""


@pytest.mark.cli
def test_a_bundle_benches_with_torch_unimportable(
    tiny_bundle: Path, eval_data: Path, tmp_path
) -> None:
    bundle = tiny_bundle
    out = tmp_path / "bench.json"
    # Labelled data of a category the bundle has a text prior for.
    candle = _copy_category(eval_data, "synth_fabric", tmp_path / "data" / "candle")
    args = [str(bundle), "--backend", "onnxruntime", "--backend", "torch-fp32"]
    args += ["--batch", "1,2", "--shots", "1", "--repeats", "1", "--json", str(out)]
    args += ["--eval", str(candle.parent)]

    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().endswith("exit 0 False"), result.stderr
    record = json.loads(out.read_text())
    backends = record["backends"]
    assert list(backends) == [
        "torch-fp32",
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
        "onnxruntime-cuda-fp32",
        "onnxruntime-cuda-fp16",
        *PROVIDER,
    ]
    assert backends["onnxruntime-cpu-fp32"]["available"]
    assert backends["onnxruntime-cpu-fp32"]["speedup_vs_authors"] is None
    accuracy = backends["onnxruntime-cpu-fp32"]["accuracy"]  # AUROC without torch; no drift
    assert set(accuracy["auroc"]) == {"candle"} and 0 <= accuracy["mean_auroc"] <= 1
    assert 0 <= accuracy["mean_pixel_auroc"] <= 1 and 0 <= accuracy["aupro"]["candle"] <= 1
    assert accuracy["drift_max_abs"] is None and accuracy["drift_reference"] is None
    assert accuracy["drift_reason"].startswith(
        "torch-fp32 cannot run here: torch is not importable"
    )
    assert any(n.startswith("score drift not measured: torch-fp32") for n in record["notes"])
    assert backends["torch-fp32"]["accuracy"] is None
    assert "torch is not importable" in backends["torch-fp32"]["reason"]
    assert "given bundle's encoder is fp32" in backends["onnxruntime-cpu-int8"]["reason"]
    rates = record["peak"]["rates"]
    assert "numpy matmul" in rates and "torch.matmul" not in rates
    assert record["machine"]["versions"]["torch"]  # installed, just not importable
