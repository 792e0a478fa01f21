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
    pool: Path | None = None,
    k: int | None = None,
    select: str | None = None,
    seed: int = 0,
    calibrate: bool = False,
    batch_size: int = 16,
) -> Path:
    """Encode the shots of a category into ``references/<category>.npz``; returns its path.

    With a ``pool`` folder instead of shots, k prompts are selected from its images (``select``:
    ``coverage``, the default, or ``random``, seeded by ``seed``) and registered; with
    ``calibrate``, half the pool is first set apart by a seeded split (``split_pool``), the
    selection sees only the other half, and the category is then calibrated on the half set
    apart. The chosen files, the mean patch residual and the calibration go to stderr.
    """
    from inctrl_runtime.decisions import DEFAULT_FPR, threshold
    from inctrl_runtime.fewshot import list_images
    from inctrl_runtime.preprocess import pixel_digest
    from inctrl_runtime.selection import SELECTIONS, split_pool

    require_category(category)
    if pool is None:
        if k is not None or select is not None or calibrate:
            raise InputError("--shots, --select and --calibrate choose from a --pool DIR: add one")
        if not shots:
            raise InputError("no --shot given: add at least one normal image, e.g. --shot good.png")
        require_files(shots, "--shot image")
        detector = _open(bundle, device, threads)
        with status(f"encoding {len(shots)} normal images"):
            detector.register(category, list(shots))
        return detector.bundle.reference_path(category)
    if shots:
        raise InputError("--pool and --shot exclude each other: give a folder or the shots")
    if k is None:
        raise InputError("no --shots given: say how many prompts to select, e.g. --shots 2")
    select = select or "coverage"
    if select not in SELECTIONS:
        raise InputError(f"unknown --select {select!r}: choose {' or '.join(SELECTIONS)}")
    if not pool.is_dir():
        raise InputError(f"{pool}: no such folder (--pool names a folder of normal images)")
    images = list_images(pool)
    if not images:
        raise InputError(
            f"{pool}: no images in this folder (--pool names a folder of normal images)"
        )
    part, apart = split_pool(images, seed, category, shots=k) if calibrate else (images, [])
    detector = _open(bundle, device, threads)
    detector.bundle.prior(category)  # an unknown category fails before any work
    if calibrate:  # every pool image is read before anything is written
        seen = {pixel_digest(detector.pixels([image])[0]): image for image in part}
        for image in apart:
            twin = seen.get(pixel_digest(detector.pixels([image])[0]))
            if twin is not None:
                raise InputError(
                    f"{image}: holds the same pixels as {twin}, which the selection sees; remove "
                    "one of them from the pool (calibration images must be unseen)"
                )
    with status(f"encoding {len(part)} pool images"):
        selection = detector.select(part, k, select, seed, category, batch_size)
    chosen = [part[i] for i in selection.indices]
    say(
        f"selected {k} of {len(part)} images by {select} (mean patch residual "
        f"{selection.mean_residual:.4f}): {', '.join(map(str, chosen))}"
    )
    with status(f"encoding {k} prompts"):
        detector.register(category, chosen, batch_size)
    if calibrate:
        with status(f"calibrating on {len(apart)} images"):
            calibration = detector.calibrate(category, apart, batch_size)
        cut = threshold(calibration.scores, DEFAULT_FPR)
        say(
            f"calibrated on n = {calibration.n} images set apart; threshold at fpr "
            f"{DEFAULT_FPR:g}: {'none' if cut is None else f'{cut:.4f}'}"
        )
        if cut is None:
            warn(calibration.too_small_for(DEFAULT_FPR))
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
    pool: Path = typer.Option(
        None,
        "--pool",
        help="A folder of normal images to select --shots prompts from (instead of --shot).",
        show_default=False,
    ),
    shots: int = typer.Option(
        None, "--shots", help="k, the number of prompts to select from --pool.", show_default=False
    ),
    select: str = typer.Option(
        None,
        "--select",
        help="coverage (the prompts that best cover the pool's patches; the default) or random "
        "(the seeded draw of `inctrl evaluate`).",
        show_default=False,
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of --select random and of the split."),
    calibrate: bool = typer.Option(
        False,
        "--calibrate",
        help="Set half the pool apart first (seeded), select from the rest, calibrate on it.",
    ),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    batch_size: BatchSize = 16,
) -> None:
    """Encode a few normal --shot images of a --category once and keep them in the bundle
    (references/<category>.npz), for later `inctrl-run score` calls; or select them from a
    --pool folder of normal images, and with --calibrate calibrate on the images set apart.

    Examples:

        inctrl-run register bundle/ --category candle -s good1.png -s good2.png

        inctrl-run register bundle/ --category candle --pool good/ --shots 2 --calibrate
    """
    path = run_register(
        bundle,
        category,
        shot or [],
        device,
        threads,
        pool,
        shots,
        select,
        seed,
        calibrate,
        batch_size,
    )
    say(f"registered {shots if pool else len(shot)} shots of {category!r} in {path}")


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
