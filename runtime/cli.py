"""``inctrl-run``: register normal examples and score images with a bundle; no torch needed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from inctrl_runtime.console import (
    BatchSize,
    Heatmaps,
    JsonFlag,
    QueryImages,
    interactive,
    new_app,
    require_category,
    require_files,
    run_app,
    say,
    status,
    stderr,
    warn,
)
from inctrl_runtime.errors import InputError

app = new_app(
    "inctrl-run",
    "Score images with an exported InCTRL bundle (onnxruntime; no torch).",
)

BundleArgument = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx).")
CategoryOption = typer.Option(
    None,
    "--category",
    help="Product category; the bundle must hold its text prior.",
    show_default=False,
)
DeviceOption = typer.Option("cpu", "--device", help="cpu, cuda[:N] or tensorrt[:N].")
ThreadsOption = typer.Option(
    None, "--threads", help="Intra-op threads (default: all cores).", show_default=False
)


def _open(bundle: Path, device: str, threads: int | None):
    from inctrl_runtime.detector import Detector

    with status("opening the bundle"):
        detector = Detector.open(bundle, device=device, threads=threads)
    if detector.bundle.is_demo:
        warn("this bundle holds the embedded DEMO model (synthetic data only, not for inspection)")
    return detector


def run_register(
    bundle: Path,
    category: str | None,
    shots: Sequence[Path],
    device: str = "cpu",
    threads: int | None = None,
) -> Path:
    """Encode the shots of a category into ``references/<category>.npz``; returns its path."""
    require_category(category)
    if not shots:
        raise InputError("no --shot given: add at least one normal image, e.g. --shot good.png")
    require_files(shots, "--shot image")
    detector = _open(bundle, device, threads)
    with status(f"encoding {len(shots)} normal images"):
        detector.register(category, list(shots))
    return detector.bundle.reference_path(category)


def run_score(
    bundle: Path,
    category: str | None,
    queries: Sequence[Path],
    shots: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 16,
    heatmaps: Path | None = None,
) -> list[dict]:
    """Score queries; one record per query, as ``inctrl score --json`` writes them.

    ``shots`` replace the category's registered bank for this call (nothing is saved).
    """
    from inctrl_runtime.results import check_heatmaps, records

    require_category(category)
    if not queries:
        raise InputError("no query images given: list the images to score after the options")
    require_files(shots, "--shot image")
    require_files(queries, "query image")
    check_heatmaps(heatmaps)
    detector = _open(bundle, device, threads)
    detector.bundle.prior(category)
    bank = detector.reference(list(shots)) if shots else detector.registered(category)
    return records(_score(detector, category, list(queries), bank, batch_size), heatmaps)


def _score(detector, category, queries, bank, batch_size):
    if not interactive():
        return detector.score(category, queries, bank, batch_size)
    from rich.progress import Progress

    with Progress(console=stderr, transient=True) as progress:
        task = progress.add_task("scoring", total=len(queries))
        return detector.score(
            category, queries, bank, batch_size, lambda done: progress.update(task, completed=done)
        )


@app.command()
def register(
    bundle: Path = BundleArgument,
    category: str = CategoryOption,
    shot: list[Path] = typer.Option(
        None, "--shot", "-s", help="A normal example image; repeat for k shots.", show_default=False
    ),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
) -> None:
    """Encode a few normal --shot images of a --category once and keep them in the bundle
    (references/<category>.npz), for later `inctrl-run score` calls.

    Example: inctrl-run register bundle/ --category candle -s good1.png -s good2.png
    """
    path = run_register(bundle, category, shot or [], device, threads)
    say(f"registered {len(shot)} shots of {category!r} in {path}")


@app.command()
def score(
    bundle: Path = BundleArgument,
    queries: QueryImages = None,
    category: str = CategoryOption,
    shot: list[Path] = typer.Option(
        None,
        "--shot",
        "-s",
        help="Normal example images to use for this call instead of the registered ones.",
        show_default=False,
    ),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    batch_size: BatchSize = 16,
    heatmaps: Heatmaps = None,
    as_json: JsonFlag = False,
) -> None:
    """Score QUERIES of a --category against its registered normal images (or --shot images).

    The JSON is that of `inctrl score --json`. Example:

        inctrl-run score bundle/ --category candle --json q1.png q2.png
    """
    from inctrl_runtime.results import print_scored

    print_scored(
        lambda: run_score(
            bundle, category, queries or [], shot or [], device, threads, batch_size, heatmaps
        ),
        as_json,
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-run``."""
    run_app(app, "inctrl-run", argv)
