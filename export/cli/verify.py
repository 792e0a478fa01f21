"""``inctrl-export verify``: a bundle's parity report with PyTorch, on demand, on your images."""

from __future__ import annotations

from pathlib import Path

import typer

from inctrl_export.cli.common import (
    Atol,
    ClipWeights,
    JsonReport,
    SourceCheckpoint,
    log_step,
    print_report,
)
from inctrl_runtime.console import status
from inctrl_runtime.files import check_output_paths


def verify_command(
    bundle: Path = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx)."),
    checkpoint: Path = SourceCheckpoint,
    clip_weights: Path = ClipWeights,
    images: Path = typer.Option(
        None,
        "--images",
        help="A folder of images (--shots prompts drawn with --seed, the rest the queries), or "
        "a category folder in MVTec layout (prompts drawn so from train/good, labelled test "
        "images: AUROC on both sides; int8's change is judged: at most 0.01). Default: the "
        "export's seeded check images (for int8: nothing judged, only reported).",
        show_default=False,
    ),
    category: str = typer.Option(
        None,
        "--category",
        help="Category whose text prior to use. Default: the images folder's name if the bundle "
        "has it, else its first category.",
        show_default=False,
    ),
    shots: int = typer.Option(3, "--shots", "-k", help="Number of prompt images (k)."),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the prompts' draw from --images: the draw inctrl evaluate makes for the "
        "category with that seed.",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] (both sides)."),
    atol: float = Atol,
    batch_size: int = typer.Option(16, help="Queries per batch on both sides."),
    json_file: Path = JsonReport,
) -> None:
    """Compare a bundle with PyTorch on images, and say what differs.

    Reports per output the max abs / max rel difference and the tolerance that would pass, the
    rank agreement of scores, AUROC on labelled data and batch invariance.

    Exit code 1 if a judged output differs by more than --atol (fp32, fp16), or an int8
    bundle's image AUROC on labelled --images changes by more than 0.01 either way (without
    labelled images an int8 bundle's drift is reported and nothing is judged). Example:

        inctrl-export verify candle_pcb -c inctrl_k2.pyth --images mvtec/candle -k 2
    """
    from inctrl_export.verify import verify_bundle

    check_output_paths({"--json": json_file})
    with status("scoring with PyTorch and with the bundle"):
        report = verify_bundle(
            bundle, checkpoint, clip_weights, images, category, shots, device, atol, batch_size,
            log=log_step, seed=seed,
        )  # fmt: skip
    print_report(report, json_file)
