"""``inctrl-run score`` and ``calibrate``: a category's images scored against its bank, with
p-values and decisions once it is calibrated on normal images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from inctrl_runtime.cli.common import (
    BundleArgument,
    CategoryOption,
    DeviceOption,
    QueryPaths,
    ThreadsOption,
    app,
    images_of,
    open_detector,
)
from inctrl_runtime.console import (
    BatchSize,
    DriftDelta,
    Heatmaps,
    HeatmapSize,
    JsonFlag,
    JsonlFlag,
    RegionFpr,
    TilesOption,
    output_format,
    progress_bar,
    require_category,
    require_files,
    say,
)
from inctrl_runtime.decisions import DEFAULT_FPR, Calibration, check_fpr, min_normals
from inctrl_runtime.drift import DEFAULT_DELTA, check_delta
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import DEFAULT_HEATMAP_SIZE, check_heatmap_size
from inctrl_runtime.regions import NOT_INSPECTED, REGION
from inctrl_runtime.report import CARD_SIZE, ReportWriter, check_report_path


def run_score(
    bundle: Path,
    category: str | None,
    queries: Sequence[Path],
    shot_images: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    batch_size: int = 16,
    heatmaps: Path | None = None,
    fpr: float = DEFAULT_FPR,
    masks: Path | None = None,
    region_fpr: float | None = None,
    heatmap_size: int = DEFAULT_HEATMAP_SIZE,
    tiles: str | None = None,
    monitor: bool = False,
    drift_delta: float = DEFAULT_DELTA,
    report: Path | None = None,
) -> Iterator[list[dict]]:
    """Score queries (image files, or folders: their images, sorted by name) batch by batch:
    the records of each batch as it finishes, as ``inctrl score --json`` writes them, with its
    heatmaps written; nothing of a batch is kept once its records are out. Everything is
    checked before this returns (the detector prepares the call eagerly).

    A calibrated category's records carry its p-values and decisions at false-positive rate
    ``fpr``, and its regions at ``region_fpr`` (None: ``fpr``); ``masks`` names a folder for
    each query's region mask. ``shot_images`` replace the category's registered bank for this
    call (nothing is saved, and there are no decisions or regions). A tiled category's queries
    are cut as its prompts were; ``tiles`` (``RxC``) cuts the ``shot_images`` and the queries,
    or, for a registered bank, must be its grid. With ``monitor``, every query is a part of the
    category's drift monitor, in order: its record says the monitor's state after it
    (``drift``), and the first record of an alarm at ``drift_delta`` is said on stderr.
    ``report`` names an HTML inspection report of the run, written once the last batch is out
    (``inctrl_runtime.report``).
    """
    from inctrl_runtime.output import check_picture_folders, record_batches
    from inctrl_runtime.tiling import Tiling, check_grid

    require_category(category)
    if not queries:
        raise InputError(
            "no query images given: list the images or folders to score after the options"
        )
    check_fpr(fpr)  # cheap checks before the bundle is hashed and any shot encoded
    if region_fpr is not None:
        check_fpr(region_fpr, "--region-fpr")
    check_heatmap_size(heatmap_size)
    check_delta(drift_delta)
    if report is not None:
        check_report_path(report)
    if monitor and shot_images:
        raise InputError(
            "--monitor watches the category's registered, calibrated bank: leave out --shot"
        )
    tiling = None if tiles is None else Tiling.parse(tiles)
    require_files(shot_images, "--shot image")
    images = images_of(queries, "query image")
    check_picture_folders(heatmaps, masks)
    detector = open_detector(bundle, device, threads)
    detector.bundle.prior(category)
    if tiling is not None and not shot_images:
        check_grid(tiling, detector.registered(category).tiling, category)
    bank = detector.reference(list(shot_images), batch_size, tiling) if shot_images else None
    picture_size = None  # a picture of each frame is kept for heatmaps, or the report's cards
    if heatmaps is not None or report is not None:
        picture_size = heatmap_size if heatmaps is not None else CARD_SIZE
    batches = detector.result_batches(
        category, images, bank, batch_size, fpr, region_fpr, picture_size, monitor, drift_delta
    )
    if report is not None:
        from inctrl_runtime.cli.report import reporting, score_header

        header = score_header(detector, category, bank, fpr, region_fpr)
        batches = reporting(batches, ReportWriter(report, header))
    named = list(map(str, images))
    records = record_batches(_with_progress(batches, len(images)), named, heatmaps, masks)
    return _saying_alarms(records, bundle, category, drift_delta) if monitor else records


def _saying_alarms(
    batches: Iterator[list[dict]], bundle: Path, category: str, delta: float
) -> Iterator[list[dict]]:
    """The batches, and one stderr line at the first record whose drift monitor alarms."""
    said = False
    for batch in batches:
        for record in batch:
            drift = record["drift"]
            if drift["alarm"] and not said:
                say(
                    f"drift alarm: {category}'s scores no longer look like its calibration's "
                    f"(the evidence reached {1 / delta:g} = 1/--drift-delta by part "
                    f"{drift['observed']}, now {drift['evidence']:.4g}); check the line (light, "
                    f"camera, parts), calibrate again, then `inctrl-run monitor {bundle} "
                    f"--category {category} --reset`"
                )
                said = True
        yield batch


def _with_progress(batches: Iterator[list], total: int) -> Iterator[list]:
    """The batches, with a progress bar of the images done."""
    with progress_bar("scoring", total) as progress:
        done = 0
        for batch in batches:
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
    detector = open_detector(bundle, device, threads)
    with progress_bar("calibrating", len(files)) as progress:
        calibration = detector.calibrate(category, files, batch_size, progress)
    return calibration, detector.bundle.reference_path(category)


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
    masks: Path = typer.Option(
        None,
        help="Write each query's region mask here, named after its image: an 8-bit PNG of its "
        f"size, {REGION} in a region, 0 elsewhere, {NOT_INSPECTED} where the model does not see.",
        show_default=False,
    ),
    heatmap_size: HeatmapSize = DEFAULT_HEATMAP_SIZE,
    fpr: float = typer.Option(
        DEFAULT_FPR,
        "--fpr",
        help="False-positive rate for a calibrated category's decisions (threshold, anomalous).",
    ),
    region_fpr: RegionFpr = None,
    tiles: TilesOption = None,
    monitor: bool = typer.Option(
        False,
        "--monitor",
        help="Watch for drift: each image is a part of the calibrated category's drift monitor "
        "(kept in BUNDLE/monitors/), and its record says the monitor's evidence, alarm and "
        "parts seen (inctrl-run monitor shows it).",
    ),
    drift_delta: DriftDelta = DEFAULT_DELTA,
    report: Path = typer.Option(
        None,
        "--report",
        help="Write an HTML inspection report of the run here: one self-contained file "
        "(pictures inlined; opens with no network) with the scores against the calibration, "
        "the flagged parts and their heatmaps, and, for labelled folders (test/<defect>/), "
        "ROC and recall.",
        show_default=False,
    ),
    as_json: JsonFlag = False,
    as_jsonl: JsonlFlag = False,
) -> None:
    """Score images of a category against its registered normal images.

    Scores QUERIES (images, or folders of images) of a --category against its registered
    normal images (or --shot images). A calibrated category's results carry a p-value and, at
    the --fpr rate, the threshold and the decision, and its defect regions (boxes in the
    image's pixels) at the --region-fpr rate. A category registered with --tiles is scored
    tile by tile. With --monitor, each image is also a part of the category's drift monitor.
    The JSON is that of `inctrl score --json`.

    Examples:

        inctrl-run score bundle/ --category candle --json q1.png q2.png

        inctrl-run score bundle/ --category candle --heatmaps maps/ --masks masks/ images/

        inctrl-run score bundle/ --category candle --jsonl images/ > scores.jsonl

        inctrl-run score bundle/ --category candle --monitor --jsonl today/ >> line.jsonl

        inctrl-run score bundle/ --category candle --report report.html images/
    """
    from inctrl_runtime.output import print_streamed

    output = output_format(as_json, as_jsonl)
    batches = run_score(
        bundle,
        category,
        queries or [],
        shot_images=shot or [],
        device=device,
        threads=threads,
        batch_size=batch_size,
        heatmaps=heatmaps,
        fpr=fpr,
        masks=masks,
        region_fpr=region_fpr,
        heatmap_size=heatmap_size,
        tiles=tiles,
        monitor=monitor,
        drift_delta=drift_delta,
        report=report,
    )
    print_streamed(batches, output)
    if report is not None:
        say(f"report: {report}")


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
    """Calibrate a category's decisions on normal images.

    Scores normal images of a registered --category that are not its prompts (--normals DIR,
    or IMAGES) and keeps their sorted scores with its bank (references/<category>.npz); its
    scores then carry p-values and decisions (inctrl-run score --fpr), and their maps' maxima
    give the region threshold (--region-fpr). Registering the category again drops its
    calibration.

    Example: inctrl-run calibrate bundle/ --category candle --normals good/
    """
    from inctrl_runtime.info import target_region_thresholds, target_thresholds

    calibration, path = run_calibrate(
        bundle,
        category,
        normals,
        images or [],
        device=device,
        threads=threads,
        batch_size=batch_size,
    )
    say(
        f"calibrated {category!r} on n = {calibration.n} normal images "
        f"({calibration.backend} {calibration.precision}), kept in {path}"
    )
    regions = target_region_thresholds(calibration) or {}
    for rate, cut in target_thresholds(calibration).items():
        if cut is None:
            say(f"  false-positive rate {rate:g}: no threshold: needs at least "
                f"{min_normals(rate)} normal images")  # fmt: skip
        else:
            say(f"  false-positive rate {rate:g}: threshold {cut:.4f}, region threshold "
                f"{regions[rate]:.4f}")  # fmt: skip
