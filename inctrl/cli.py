"""The ``inctrl`` command line (torch side). Commands are thin: they parse and call typed functions.

User mistakes print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from inctrl.errors import InputError

EXIT_INPUT_ERROR = 2

app = typer.Typer(
    name="inctrl",
    help="InCTRL few-shot anomaly detection: score images against a few normal examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stderr = Console(stderr=True)


data_app = typer.Typer(
    help="Data sets: generate synthetic MVTec-layout data.", no_args_is_help=True
)
app.add_typer(data_app, name="data")


@app.callback()
def _root() -> None:
    """InCTRL few-shot anomaly detection (torch side)."""


SCORE_FIELDS = (
    "score",
    "holistic_score",
    "image_residual_score",
    "text_score",
    "max_patch_residual",
    "patch_residual_map",
)


def _require_files(paths: Sequence[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file")


def run_score(
    checkpoint: Path | None,
    category: str | None,
    shots: Sequence[Path],
    queries: Sequence[Path],
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 16,
    clip_weights: Path | None = None,
    heatmaps: Path | None = None,
    progress: bool = False,
) -> list[dict]:
    """Score query images against k normal shots of a category; one record per query, in order.

    Each record holds ``image`` (the path as given) and every head output, the patch map as a
    flat list of P floats (row-major over the patch grid).
    """
    if checkpoint is None:
        raise InputError("no --checkpoint given: name an InCTRL checkpoint (.pyth or ours)")
    if not category:
        raise InputError("no --category given: name the product category, e.g. --category candle")
    if not shots:
        raise InputError("no --shot given: add at least one normal image, e.g. --shot good.png")
    if not queries:
        raise InputError("no query images given: list the images to score after the options")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    _require_files([checkpoint], "checkpoint")
    _require_files(shots, "--shot image")
    _require_files(queries, "query image")

    # torch loads slowly; import it only once the arguments are known to be sane.
    from inctrl.model import InCTRL

    with stderr.status("loading model", spinner="dots") if progress else contextlib.nullcontext():
        model = InCTRL.from_checkpoint(checkpoint, clip_weights, device=device, precision=precision)
        bank = model.reference(list(shots))
        prior = model.text_prior(category)

    records: list[dict] = []
    chunks = [list(queries[i : i + batch_size]) for i in range(0, len(queries), batch_size)]
    for chunk in track(chunks, description="scoring", console=stderr, disable=not progress):
        scores = model.score(chunk, bank, prior, batch_size=batch_size)
        values = {name: getattr(scores, name).cpu().tolist() for name in SCORE_FIELDS}
        for i, path in enumerate(chunk):
            records.append({"image": str(path), **{n: values[n][i] for n in SCORE_FIELDS}})
    if heatmaps is not None:
        _write_heatmaps(records, heatmaps, model.preprocessing)
    return records


def _write_heatmaps(records: list[dict], folder: Path, preprocessing) -> None:
    from inctrl.preprocess import load_image
    from inctrl.visualize import save_heatmap

    folder.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(records):
        name = f"{index:04d}_{Path(record['image']).stem}.png"
        save_heatmap(load_image(record["image"]), record["patch_residual_map"], folder / name)
        record["heatmap"] = str(folder / name)


def print_table(records: list[dict]) -> None:
    """A readable table of the scalar scores, larger scores more anomalous."""
    table = Table(title="InCTRL anomaly scores (higher = more anomalous)")
    table.add_column("image", overflow="fold")
    for name in SCORE_FIELDS[:-1]:
        table.add_column(name.replace("_", " "), justify="right")
    for record in records:
        table.add_row(record["image"], *(f"{record[n]:.4f}" for n in SCORE_FIELDS[:-1]))
    Console().print(table)


@app.command()
def score(
    queries: list[Path] = typer.Argument(  # noqa: B008
        None, help="Query images to score (png, jpg, ..., npy).", show_default=False
    ),
    checkpoint: Path = typer.Option(  # noqa: B008
        None,
        "--checkpoint",
        "-c",
        help="InCTRL checkpoint: the authors' .pyth or ours.",
        show_default=False,
    ),
    category: str = typer.Option(
        None,
        "--category",
        help="Product category, e.g. candle or metal_nut (picks the text prior).",
        show_default=False,
    ),
    shot: list[Path] = typer.Option(  # noqa: B008
        None,
        "--shot",
        "-s",
        help="A normal example image; repeat for k shots.",
        show_default=False,
    ),
    device: str = typer.Option("cpu", help="cpu, cuda or cuda:N."),
    precision: str = typer.Option("fp32", help="Encoder precision: fp32, or fp16/bf16 on CUDA."),
    batch_size: int = typer.Option(16, help="Query images per encoder pass."),
    clip_weights: Path = typer.Option(  # noqa: B008
        None,
        help="open_clip weights file, for our checkpoints that hold head weights only.",
        show_default=False,
    ),
    heatmaps: Path = typer.Option(  # noqa: B008
        None,
        help="Write a heatmap PNG per query (patch residuals over the image) here.",
        show_default=False,
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table."),
) -> None:
    """Score QUERIES against a few normal --shot images of one --category.

    Example: inctrl score -c inctrl_k2.pyth --category candle -s good1.png -s good2.png q.png
    """
    records = run_score(
        checkpoint,
        category,
        shot or [],
        queries or [],
        device=device,
        precision=precision,
        batch_size=batch_size,
        clip_weights=clip_weights,
        heatmaps=heatmaps,
        progress=sys.stderr.isatty(),
    )
    if as_json:
        sys.stdout.write(json.dumps(records) + "\n")
    else:
        print_table(records)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(  # noqa: B008
        None, "--out", help="Folder to create (must not exist or be empty).", show_default=False
    ),
    seed: int = typer.Option(0, help="Same seed, same files (byte for byte)."),
    categories: int = typer.Option(4, help="How many synthetic categories (1-7)."),
    images_per_category: int = typer.Option(12, help="Normal training images per category."),
    size: int = typer.Option(256, help="Image side in pixels."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Generate a deterministic anomaly data set in the MVTec AD layout (textures and objects
    with scratches, holes, stains, cut-paste patches and warps, plus ground-truth masks)."""
    from inctrl.synth import synthesize

    if out is None:
        raise InputError("no --out given: name a new folder for the data set, e.g. --out synth")
    with (
        stderr.status(f"writing {out}", spinner="dots")
        if sys.stderr.isatty()
        else (contextlib.nullcontext())
    ):
        summary = synthesize(out, seed, categories, images_per_category, size)
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


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs the app, turning user mistakes into one line and exit code 2."""
    try:
        app(args=argv, prog_name="inctrl", standalone_mode=True)
    except InputError as err:
        stderr.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
