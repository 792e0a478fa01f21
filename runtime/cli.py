"""``inctrl-run``: register normal examples, calibrate, and score images with a bundle, and say
what a bundle holds; no torch needed."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inctrl_runtime.console import (
    BatchSize,
    Heatmaps,
    JsonFlag,
    new_app,
    progress_bar,
    require_category,
    require_files,
    run_app,
    say,
    status,
    warn,
)
from inctrl_runtime.decisions import DEFAULT_FPR, Calibration, check_fpr, min_normals, threshold
from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl_runtime.pool import PoolRegistration

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
DeviceOption = typer.Option("cpu", "--device", help="cpu or (cuda|tensorrt|ort-tensorrt)[:N].")
ThreadsOption = typer.Option(
    None, "--threads", help="Intra-op threads (default: all cores).", show_default=False
)
QueryPaths = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Query images (png, jpg, ..., npy), or folders: their images, sorted by name.",
        show_default=False,
    ),
]


def _open(bundle: Path, device: str, threads: int | None):
    from inctrl_runtime.detector import Detector

    with status("opening the bundle"):
        detector = Detector.open(bundle, device=device, threads=threads)
    if detector.bundle.is_demo:
        warn("this bundle holds the embedded DEMO model (synthetic data only, not for inspection)")
    return detector


def images_of(paths: Sequence[Path], what: str) -> list[Path]:
    """The image files given, each folder among them replaced by its images, sorted by name
    (``list_images``); a missing file or a folder without images is a one-line error."""
    from inctrl_runtime.fewshot import IMAGE_SUFFIXES, list_images

    images: list[Path] = []
    for path in paths:
        if not path.is_dir():
            require_files([path], what)
            images.append(path)
        elif found := list_images(path):
            images.extend(found)
        else:
            raise InputError(
                f"{path}: a folder without {what}s (it takes {', '.join(IMAGE_SUFFIXES)} files); "
                "name a folder that holds them"
            )
    return images


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
    from inctrl_runtime.fewshot import list_images
    from inctrl_runtime.pool import register_from_pool
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
    # a pool too small to split is refused before the model loads
    part, apart = split_pool(images, seed, category, shots=k) if calibrate else (images, [])
    detector = _open(bundle, device, threads)
    registration = register_from_pool(
        detector, category, part, k, select, seed, apart, batch_size, progress_bar, _say_selected
    )
    calibration = registration.calibration
    if calibration is not None:
        cut = threshold(calibration.scores, DEFAULT_FPR)
        say(
            f"calibrated on n = {calibration.n} images set apart; threshold at fpr "
            f"{DEFAULT_FPR:g}: {'none' if cut is None else f'{cut:.4f}'}"
        )
        if cut is None:
            warn(calibration.too_small_for(DEFAULT_FPR))
    return registration.bank


def _say_selected(registration: PoolRegistration) -> None:
    say(
        f"selected {len(registration.chosen)} of {registration.pool} images by "
        f"{registration.method} (mean patch residual {registration.mean_residual:.4f}): "
        f"{', '.join(map(str, registration.chosen))}"
    )


def run_score(
    bundle: Path,
    category: str | None,
    queries: Sequence[Path],
    shots: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 16,
    heatmaps: Path | None = None,
    fpr: float = DEFAULT_FPR,
) -> Iterator[list[dict]]:
    """Score queries (image files, or folders: their images, sorted by name) batch by batch:
    the records of each batch as it finishes, as ``inctrl score --json`` writes them, with its
    heatmaps written; nothing of a batch is kept once its records are out.

    A calibrated category's records carry its p-values and decisions at false-positive rate
    ``fpr``. ``shots`` replace the category's registered bank for this call (nothing is saved,
    and there are no decisions).
    """
    from inctrl_runtime.preprocess import describe
    from inctrl_runtime.results import check_heatmaps, record_batches

    require_category(category)
    check_fpr(fpr)
    if not queries:
        raise InputError(
            "no query images given: list the images or folders to score after the options"
        )
    require_files(shots, "--shot image")
    images = images_of(queries, "query image")
    check_heatmaps(heatmaps)
    detector = _open(bundle, device, threads)
    detector.bundle.prior(category)
    if shots:
        bank = detector.reference(list(shots))
    else:
        bank = None  # the registered one, with its calibration
        detector.registered(category)  # an unregistered category fails before any work
    batches = _scored_batches(detector, category, images, bank, batch_size, fpr)
    return record_batches(batches, [describe(image) for image in images], heatmaps)


def _scored_batches(detector, category, images, bank, batch_size, fpr):
    """``Detector.score_batches`` with a progress bar."""
    with progress_bar("scoring", len(images)) as progress:
        done = 0
        for batch in detector.score_batches(category, images, bank, batch_size, fpr):
            yield batch
            done += len(batch)
            progress(done)


def run_calibrate(
    bundle: Path,
    category: str | None,
    normals: Path | None,
    images: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 16,
) -> tuple[Calibration, Path]:
    """Calibrate a registered category on normal images that are not its prompts: the images
    of the folder ``normals``, or ``images`` (files or folders). Returns the calibration and
    the bank file that keeps it."""
    require_category(category)
    if normals is not None and images:
        raise InputError("give either --normals DIR or the normal images, not both")
    given = [normals] if normals is not None else list(images)
    if not given:
        raise InputError(
            "no normal images given: name a folder with --normals DIR, or list the images after "
            "the options"
        )
    files = images_of(given, "normal image")
    detector = _open(bundle, device, threads)
    with progress_bar("calibrating", len(files)) as progress:
        calibration = detector.calibrate(category, files, batch_size, progress)
    return calibration, detector.bundle.reference_path(category)


def run_info(bundle: Path) -> dict:
    """What a bundle holds, as ``inctrl-run info --json`` prints it (``info.bundle_info``)."""
    from inctrl_runtime.info import bundle_info

    return bundle_info(bundle)


def run_unregister(bundle: Path, category: str | None) -> Path:
    """Remove a category's registered bank, and its calibration with it; returns its path."""
    from inctrl_runtime.bundle import Bundle

    require_category(category)
    path = Bundle.open(bundle, check_files=False).reference_path(category)
    if not path.is_file():
        raise InputError(f"category {category!r} is not registered in {bundle}: nothing to remove")
    path.unlink()
    return path


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
        help="Set half the pool apart (seeded), select from the other half, then calibrate on "
        "the half set apart.",
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
    queries: QueryPaths = None,
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
    fpr: float = typer.Option(
        DEFAULT_FPR,
        "--fpr",
        help="False-positive rate for a calibrated category's decisions (threshold, anomalous).",
    ),
    as_json: JsonFlag = False,
    as_jsonl: bool = typer.Option(
        False, "--jsonl", help="Print one JSON record a line as each batch finishes (large runs)."
    ),
) -> None:
    """Score QUERIES (images, or folders of images) of a --category against its registered
    normal images (or --shot images). A calibrated category's results carry a p-value and, at
    the --fpr rate, the threshold and the decision.

    The JSON is that of `inctrl score --json`. Examples:

        inctrl-run score bundle/ --category candle --json q1.png q2.png

        inctrl-run score bundle/ --category candle --jsonl images/ > scores.jsonl
    """
    from inctrl_runtime.results import print_streamed

    if as_json and as_jsonl:
        raise InputError(
            "--json and --jsonl exclude each other: --json prints one list at the end, --jsonl "
            "one record a line as batches finish"
        )
    batches = run_score(
        bundle, category, queries or [], shot or [], device, threads, batch_size, heatmaps, fpr
    )
    print_streamed(batches, "jsonl" if as_jsonl else "json" if as_json else "table")


@app.command()
def calibrate(
    bundle: Path = BundleArgument,
    images: list[Path] = typer.Argument(
        None, help="Normal images, or folders of them, that are not prompts.", show_default=False
    ),
    category: str = CategoryOption,
    normals: Path = typer.Option(
        None,
        "--normals",
        help="A folder of normal images that are not the category's prompts.",
        show_default=False,
    ),
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    batch_size: BatchSize = 16,
) -> None:
    """Calibrate a registered --category on normal images that are not its prompts (--normals
    DIR, or IMAGES): their sorted scores are kept with its bank (references/<category>.npz), and
    its scores then carry p-values and decisions (inctrl-run score --fpr). Registering the
    category again drops its calibration.

    Example: inctrl-run calibrate bundle/ --category candle --normals good/
    """
    from inctrl_runtime.info import target_thresholds

    calibration, path = run_calibrate(
        bundle, category, normals, images or [], device, threads, batch_size
    )
    say(
        f"calibrated {category!r} on n = {calibration.n} normal images "
        f"({calibration.backend} {calibration.precision}), kept in {path}"
    )
    for rate, cut in target_thresholds(calibration).items():
        needs = f"no threshold: needs at least {min_normals(rate)} normal images"
        say(f"  false-positive rate {rate:g}: {needs if cut is None else f'threshold {cut:.4f}'}")


@app.command()
def info(
    bundle: Path = BundleArgument,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Say what a bundle holds: the model and its precision, the export check, and per category
    its text prior, registered bank (k, sources, date) and calibration (n, backend, date,
    thresholds at false-positive rates 0.01, 0.05, 0.1).

    Example: inctrl-run info bundle/ --json
    """
    found = run_info(bundle)
    if as_json:
        sys.stdout.write(json.dumps(found, indent=1) + "\n")
    else:
        _print_info(found)


def _print_info(found: dict) -> None:
    """``run_info`` as a two-column table on stdout: the bundle, then a section per category."""
    from rich.console import Console
    from rich.table import Table

    from inctrl_runtime.info import info_sections

    table = Table(title=f"bundle {found['bundle']}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for index, rows in enumerate(info_sections(found)):
        if index:
            table.add_section()
        for row in rows:
            table.add_row(*row)
    Console().print(table)


@app.command()
def unregister(bundle: Path = BundleArgument, category: str = CategoryOption) -> None:
    """Remove the registered bank of a --category (references/<category>.npz), and with it
    its calibration.

    Example: inctrl-run unregister bundle/ --category candle
    """
    path = run_unregister(bundle, category)
    say(f"unregistered {category!r}: removed {path}")


# Commands in their own modules register on ``app`` when imported.
from inctrl_runtime import cli_client, cli_serve  # noqa: E402, F401


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-run``."""
    run_app(app, "inctrl-run", argv)
