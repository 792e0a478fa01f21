"""``inctrl-export onnx``: a checkpoint -> a bundle, checked against PyTorch; int8 with its
calibration, a chosen split or one chosen on labelled data (``--accuracy-data``)."""

from __future__ import annotations

from pathlib import Path

import typer

from inctrl_export.cli.common import (
    Atol,
    Checkpoint,
    ClipWeights,
    JsonReport,
    exit_1_on,
    left_as_it_was,
    log_step,
    print_report,
)
from inctrl_runtime.console import say, status
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths


def onnx(
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to create."),
    checkpoint: Path = Checkpoint,
    category: list[str] = typer.Option(
        None,
        "--category",
        help="A product category to precompute the text prior of; repeat for several. "
        "Default for the demo: its synthetic categories.",
        show_default=False,
    ),
    opset: int = typer.Option(17, help="ONNX opset, 17 or newer."),
    precision: str = typer.Option(
        "fp32",
        help="Encoder precision: fp32; fp16 (for GPUs; LayerNorm, softmax, norms stay fp32); "
        "int8 (static Q/DQ: the transformer blocks' matrix products in int8, symmetric, weights "
        "per channel, activations calibrated on --calibration images; for CPUs and TensorRT).",
    ),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        help="int8: normal images of the bundle's categories to calibrate on: a folder of "
        "images, an MVTec-layout category folder (its train/good images) or a data set folder "
        "of such categories (train/good of each); at most 200 are used, evenly spaced by name. "
        "Required but for the demo, which calibrates on its own synthetic normals.",
        show_default=False,
    ),
    calibration_method: str = typer.Option(
        None,
        "--calibration-method",
        help="int8: how activation ranges are set from the calibration images: percentile "
        "(default: the 99.999th percentile of |x|), minmax or entropy.",
        show_default=False,
    ),
    keep_fp32: list[str] = typer.Option(
        None,
        "--keep-fp32",
        help="int8: leave these transformer block products in fp32: a kind (in_proj, out_proj: "
        "attention's input and output projections; c_fc, c_proj: the MLP's), a block number "
        "counted from 0 (its four), or both as KIND:BLOCK (c_proj:3); repeat for several. The "
        "manifest records which stayed fp32. Default: none.",
        show_default=False,
    ),
    accuracy_data: Path = typer.Option(
        None,
        "--accuracy-data",
        help="int8: choose the block products left in fp32 on this labelled data (MVTec-layout "
        "categories of the bundle, test/good and test/<defect>): each category's image AUROC "
        "with int8 is measured against PyTorch fp32 (k prompts drawn from train/good as inctrl "
        "evaluate draws them, seed 0), and products return to fp32, most sensitive first, "
        "until every category's change is within --max-auroc-change; exit 1 if only an "
        "all-fp32 encoder holds it. For a checkpoint, its train/good images also calibrate "
        "unless --calibration is given. The manifest records the split, the data and every "
        "measured change.",
        show_default=False,
    ),
    max_auroc_change: float = typer.Option(
        None,
        "--max-auroc-change",
        help="--accuracy-data: the most any category's image AUROC may change, either way. "
        "Default: 0.01.",
        show_default=False,
    ),
    accuracy_granularity: str = typer.Option(
        None,
        "--accuracy-granularity",
        help="--accuracy-data: what returns to fp32 at a time: kind (each of the four kinds in "
        "every block; default, the fewest trials), block (each block's four) or product "
        "(each alone: the most trials and the finest split, the one that fits the data "
        "closest: check it on other images with verify).",
        show_default=False,
    ),
    accuracy_shots: int = typer.Option(
        None,
        "--accuracy-shots",
        help="--accuracy-data: prompt images per category (k). Default: 2.",
        show_default=False,
    ),
    clip_weights: Path = ClipWeights,
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check the bundle against PyTorch after writing it."
    ),
    atol: float = Atol,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    json_file: Path = JsonReport,
) -> None:
    """Export a checkpoint as a bundle for the lean runtime.

    The bundle holds encoder.onnx, head.onnx, priors.json and manifest.json.

    The bundle is then run through inctrl_runtime on seeded images (other batch size and k than
    the tracing inputs) and compared with PyTorch; the exit code is 1 if a judged output differs
    by more than --atol. Examples:

        inctrl-export onnx -c inctrl_k2.pyth --category candle --category pcb1 --out candle_pcb

        inctrl-export onnx -c inctrl_k2.pyth --category candle --precision int8 \\
            --calibration mvtec/candle --out candle_int8

        inctrl-export onnx --precision int8 --accuracy-data synth --out demo_int8
    """
    from inctrl_export.accuracy_control import Int8BringsNothing
    from inctrl_export.bundle import export_bundle

    check_output_paths({"--json": json_file})
    accuracy = _accuracy_options(
        accuracy_data, max_auroc_change, accuracy_granularity, accuracy_shots
    )
    with (
        status("exporting (tracing, text priors, self-check)"),
        left_as_it_was(out),
        exit_1_on(Int8BringsNothing),
    ):
        result = export_bundle(
            out,
            checkpoint,
            category or [],
            clip_weights,
            opset=opset,
            precision=precision,
            verify=verify,
            atol=atol,
            force=force,
            log=log_step,
            calibration=calibration,
            calibration_method=calibration_method,
            keep_fp32=keep_fp32 or [],
            accuracy=accuracy,
        )
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in result.file_bytes.items())
    say(f"wrote {out}: {sizes}")
    if result.report is not None:
        print_report(result.report, json_file)


def _accuracy_options(
    data: Path | None, max_change: float | None, granularity: str | None, shots: int | None
):
    """``--accuracy-data`` and its options (None without it; its options alone are refused)."""
    from inctrl_export.bundle import AccuracyOptions

    given = {"--max-auroc-change": max_change, "--accuracy-granularity": granularity,
             "--accuracy-shots": shots}  # fmt: skip
    if data is None:
        named = [option for option, value in given.items() if value is not None]
        if named:
            raise InputError(f"{', '.join(named)}: only with --accuracy-data")
        return None
    defaults = AccuracyOptions(data)
    return AccuracyOptions(
        data,
        defaults.max_auroc_change if max_change is None else max_change,
        granularity or defaults.granularity,
        defaults.shots if shots is None else shots,
    )
