"""``inctrl evaluate``: image AUROC / AUPRC (and pixel AUROC, AUPRO) per category over prompt
draws, coverage-selected prompts beside them, and operating points (and the regions at them) at
target false-positive rates."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from inctrl.cli.common import ClipWeights, Device, ModelCheckpoint, app
from inctrl.loading import load_model
from inctrl_runtime.console import TilesOption, interactive, require_files, say, status, warn
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths, write_json, write_text
from inctrl_runtime.report import Header, ReportWriter, check_report_path, run_fields

if TYPE_CHECKING:
    from inctrl.evaluation_report import EvaluationReport

DEFAULT_RUNS = 5
STDOUT = "-"


def run_evaluate(
    data: Sequence[Path],
    shots: int | None,
    checkpoint: Path | None = None,
    clip_weights: Path | None = None,
    seeds: int | None = None,
    prompts: Path | None = None,
    json_out: Path | None = None,
    markdown_out: Path | None = None,
    device: str = "cpu",
    batch_size: int = 16,
    pixel: bool = True,
    plot: Path | None = None,
    selection: bool = True,
    tiles: str | None = None,
    tile_prompts: str = "every",
    report: Path | None = None,
) -> EvaluationReport:
    """Evaluate a checkpoint (default: the embedded demo) on data sets; runs use seeds
    0..``seeds``-1, or the authors' prompt files in ``prompts``. Writes the report as JSON to
    ``json_out`` (unless it is ``-``, which the command prints) and as markdown to
    ``markdown_out`` and ROC curves with score histograms as a PNG to ``plot``, each
    atomically, and returns it. ``tiles`` (``RxC``) scores every image tile by tile against
    ``tile_prompts`` (``every`` prompt tile, or the ``same`` position's). ``report`` names an
    HTML inspection report: a section per category showing its first run."""
    from inctrl.data import load_samples
    from inctrl.evaluation import check_arguments, evaluate
    from inctrl_runtime.tiling import Tiling

    if not data:
        raise InputError("no --data given: name a data set root, category folder or JSON list")
    if shots is None:
        raise InputError("no --shots given: say how many normal prompts per run, e.g. --shots 2")
    if prompts is not None and seeds is not None:
        warn("--seeds is ignored with --prompts: the prompt files make a single run")
    runs = DEFAULT_RUNS if seeds is None else seeds
    tiling = None if tiles is None else Tiling.parse(tiles)
    check_arguments(shots, batch_size, range(runs), prompts, tiling, tile_prompts)
    check_output_paths({"--json": json_out, "--markdown": markdown_out, "--plot": plot})
    if report is not None:
        check_report_path(report)
    if checkpoint is not None:
        require_files([checkpoint], "checkpoint")
    samples = load_samples(data)
    with status("loading model"):
        model = load_model(checkpoint, clip_weights, device, notice=warn)
    name = str(checkpoint) if checkpoint is not None else "the embedded DEMO model"
    common = {
        "seeds": range(runs), "prompts_dir": prompts, "batch_size": batch_size, "pixel": pixel,
        "progress": interactive(), "selection": selection, "checkpoint_name": name,
        "tiling": tiling, "tile_prompts": tile_prompts,
    }  # fmt: skip
    if report is None:
        result = evaluate(model, samples, shots, **common)
    else:
        from inctrl.evaluation_gallery import REPORT_FPR, EvaluationGallery

        fields = (("data", ", ".join(map(str, data))), ("model", name),
                  ("prompts (k)", str(shots)), ("tiles", tiles or "none"),
                  ("decisions", f"at a false-positive rate of {REPORT_FPR:g}"))  # fmt: skip
        header = Header("inctrl evaluation report", (*fields, *run_fields("inctrl")))
        with ReportWriter(report, header) as writer:
            gallery = EvaluationGallery(writer, model.preprocessing, tiling, batch_size)
            result = evaluate(model, samples, shots, **common, gallery=gallery)
            writer.finish()
    if json_out is not None and str(json_out) != STDOUT:
        write_json(json_out, result.to_dict())
    if markdown_out is not None:
        write_text(markdown_out, result.to_markdown())
    if plot is not None:
        from inctrl.plots import plot_report

        plot_report(result, plot)
    return result


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> Table:
    """Rows per category, then the mean row (bold) below a rule."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column == "category" else "right")
    for row in rows[:-1]:
        table.add_row(*row)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    return table


def print_table(report: EvaluationReport) -> None:
    """The report as tables on stdout: mean ± std over runs per category, then the mean; the
    prompt choice (with drawn runs); the operating points; the regions at them (with masks)."""
    from inctrl.evaluation_report import (
        OPERATING_COLUMNS,
        OPERATING_TITLE,
        REGION_COLUMNS,
        REGION_TITLE,
        SELECTION_COLUMNS,
        SELECTION_TITLE,
        TABLE_COLUMNS,
    )

    console = Console()
    console.print(_table(report.settings.describe(), TABLE_COLUMNS, report.rows()))
    selection = report.selection_rows()
    if selection:
        console.print(_table(SELECTION_TITLE, SELECTION_COLUMNS, selection))
    console.print(_table(OPERATING_TITLE, OPERATING_COLUMNS, report.operating_rows()))
    regions = report.region_rows()
    if regions:
        console.print(_table(REGION_TITLE, REGION_COLUMNS, regions))


@app.command()
def evaluate(
    data: list[Path] = typer.Option(
        None,
        "--data",
        "-d",
        help="MVTec-layout data set root, category folder or the authors' JSON list; repeatable.",
        show_default=False,
    ),
    shots: int = typer.Option(
        None, "--shots", "-k", help="Normal prompt images per run (k).", show_default=False
    ),
    checkpoint: ModelCheckpoint = None,
    clip_weights: ClipWeights = None,
    seeds: int = typer.Option(
        None,
        "--seeds",
        help=f"Runs, drawing prompts from train/good with seeds 0..N-1 (default {DEFAULT_RUNS}).",
        show_default=False,
    ),
    prompts: Path = typer.Option(
        None,
        "--prompts",
        help="Folder of the authors' <category>.pt prompt files: one run with exactly those.",
        show_default=False,
    ),
    json_out: Path = typer.Option(
        None,
        "--json",
        help="Write the full report (per run, per image scores) as JSON here; '-' prints it "
        "instead of the table.",
        show_default=False,
    ),
    markdown_out: Path = typer.Option(
        None, "--markdown", help="Write the table as markdown here.", show_default=False
    ),
    device: Device = "cpu",
    batch_size: int = typer.Option(16, help="Images per encoder pass."),
    pixel: bool = typer.Option(
        True,
        "--pixel/--no-pixel",
        help="Pixel AUROC, AUPRO and the regions at the operating points where ground-truth "
        "masks exist (in each test image's frame, at its resolution).",
    ),
    selection: bool = typer.Option(
        True,
        "--selection/--no-selection",
        help="With drawn runs, one more run with the k train/good images that best cover the "
        "pool (it compares every pair of pool images: switch it off for large pools).",
    ),
    plot: Path = typer.Option(
        None,
        help="Write ROC curves and score histograms per category as a PNG here.",
        show_default=False,
    ),
    tiles: TilesOption = None,
    tile_prompts: str = typer.Option(
        "every",
        "--tile-prompts",
        help="With --tiles: compare each query tile with every prompt tile (as inctrl-run "
        "register --tiles keeps them), or with the prompts' tiles at the same position (same).",
    ),
    report_file: Path = typer.Option(
        None,
        "--report",
        help="Write an HTML inspection report here: per category, its first run's test images "
        "(heatmaps, decisions at a rate of 0.1), score histogram, ROC and recall per defect.",
        show_default=False,
    ),
) -> None:
    """Image AUROC/AUPRC per category over prompt draws, pixel AUROC and AUPRO where masks exist.

    Mean ± std over runs that draw k prompts from train/good (or the authors' .pt prompts);
    with drawn runs, also the AUROC of the k train/good images that best cover its patch
    tokens. Operating points: each run calibrated on the train/good images that are not its
    prompts, the false-positive rate on test normals and recall on test anomalies at target
    rates 0.01, 0.05 and 0.1 (none where too few images: 0.01 needs 99). With masks, pixel
    AUROC and AUPRO (to a false-positive rate of 0.3) in each test image's frame, and at each
    rate the region threshold of the calibration images' map maxima: the share of ground-truth
    regions it touches and of test normals it gives a region.

    Example: inctrl evaluate -c inctrl_k2.pyth --data mvtec --shots 2 --json report.json
    """
    report = run_evaluate(
        data or [],
        shots,
        checkpoint=checkpoint,
        clip_weights=clip_weights,
        seeds=seeds,
        prompts=prompts,
        json_out=json_out,
        markdown_out=markdown_out,
        device=device,
        batch_size=batch_size,
        pixel=pixel,
        plot=plot,
        selection=selection,
        tiles=tiles,
        tile_prompts=tile_prompts,
        report=report_file,
    )
    if report_file is not None:
        say(f"report: {report_file}")
    if json_out is not None and str(json_out) == STDOUT:
        sys.stdout.write(json.dumps(report.to_dict(), indent=1) + "\n")
    else:
        print_table(report)
