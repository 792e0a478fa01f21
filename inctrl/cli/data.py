"""``inctrl data ...`` and ``inctrl prompts ...``: data sets and few-shot prompt sets."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from inctrl.cli.common import data_app
from inctrl_runtime.console import status
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(
        None, "--out", help="Folder to create (must not exist or be empty).", show_default=False
    ),
    seed: int = typer.Option(0, help="Same seed, same files (byte for byte)."),
    categories: int = typer.Option(4, help="How many synthetic categories (1-7)."),
    images_per_category: int = typer.Option(12, help="Normal training images per category."),
    size: str = typer.Option(
        "256", help="Image side in pixels, or WIDTHxHEIGHT for non-square frames (e.g. 1024x768)."
    ),
    defects: str = typer.Option(
        "default",
        help="default (scaled with the frame) or small (about 5-30 px across, anywhere, a third "
        "of them in the side bands a centre crop cuts off).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a deterministic anomaly data set in the MVTec AD layout.

    Textures and objects with scratches, holes, stains, cut-paste patches and warps, plus
    ground-truth masks.

    Example (large frames with small defects): inctrl data synth --out frames --size 1024x768
    --defects small"""
    from inctrl.synth import synthesize

    if out is None:
        raise InputError("no --out given: name a new folder for the data set, e.g. --out synth")
    check_output_paths({"--out": out})
    with status(f"writing {out}"):
        summary = synthesize(out, seed, categories, images_per_category, _size(size), defects)
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
        return
    table = Table(title=f"synthetic data set in {summary['root']} (seed {seed})")
    for column in ("category", "kind", "train good", "test good", "test anomalous"):
        table.add_column(column, justify="left" if column in ("category", "kind") else "right")
    for name, info in summary["categories"].items():
        test = info["test"]
        anomalous = sum(n for label, n in test.items() if label != "good")
        table.add_row(
            name, info["kind"], str(info["train"]["good"]), str(test["good"]), str(anomalous)
        )
    Console().print(table)


def _size(text: str) -> int | tuple[int, int]:
    """``--size``: a side (``256``) or WIDTHxHEIGHT (``1024x768``)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) in (1, 2) and all(part.isdigit() for part in parts):
        sides = [int(part) for part in parts]
        return sides[0] if len(sides) == 1 else (sides[0], sides[1])
    raise InputError(f"--size {text!r}: give a side in pixels (256) or WIDTHxHEIGHT (1024x768)")


@data_app.command("index")
def data_index(
    root: Path = typer.Argument(..., help="MVTec-layout data set root (or one category folder)."),
    out: Path = typer.Option(None, "--out", help="Folder for the JSON lists.", show_default=False),
) -> None:
    """Write the authors' JSON lists for every category of a data set.

    <c>_val_normal.json and <c>_val_outlier.json (test), <c>_normal.json and <c>_outlier.json
    (training)."""
    from inctrl.data import index_to_json

    if out is None:
        raise InputError("no --out given: name a folder for the JSON lists, e.g. --out json")
    check_output_paths({"--out": out})
    written = index_to_json(root, out)
    for path in written:
        sys.stdout.write(f"{path}\n")
