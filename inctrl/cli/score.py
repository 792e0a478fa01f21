"""``inctrl score``: score query images against k normal shots of a category."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer
from rich.progress import track

from inctrl.cli.common import ClipWeights, Device, ModelCheckpoint, app
from inctrl.loading import load_model
from inctrl_runtime.console import (
    BatchSize,
    Heatmaps,
    HeatmapSize,
    JsonFlag,
    QueryImages,
    TilesOption,
    interactive,
    require_category,
    require_files,
    status,
    stderr,
    warn,
)
from inctrl_runtime.errors import InputError
from inctrl_runtime.output import check_picture_folders, print_scored, to_records
from inctrl_runtime.preprocess import DEFAULT_HEATMAP_SIZE, check_heatmap_size, decode
from inctrl_runtime.results import Result, Scores, frame_scores, to_results, view_scores
from inctrl_runtime.tiling import FrameTiling, Tiling


def run_score(
    checkpoint: Path | None,
    category: str | None,
    shot_images: Sequence[Path],
    queries: Sequence[Path],
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 16,
    clip_weights: Path | None = None,
    heatmaps: Path | None = None,
    bank_file: Path | None = None,
    heatmap_size: int = DEFAULT_HEATMAP_SIZE,
    tiles: str | None = None,
) -> list[dict]:
    """Score query images against k normal shots of a category; one record per query, in order.

    Each record holds ``image`` (the path as given) and every head output, the patch map as a
    flat list of P floats (row-major over the patch grid); the decision and region fields are
    None (no calibration here: ``inctrl-run calibrate`` makes one). ``bank_file`` (a
    ReferenceBank saved by ``inctrl prompts make`` or the Python API) replaces the
    ``shot_images``. ``tiles`` (``RxC``) cuts shots and queries into tiles as the runtime does
    (``inctrl_runtime.tiling``): every tile of every shot is a prompt, and each query frame's
    record is its tiles' (``frame_scores``).
    """
    require_category(category)
    if not shot_images and bank_file is None:
        raise InputError("no --shot given: add at least one normal image, e.g. --shot good.png")
    if shot_images and bank_file is not None:
        raise InputError("give either --shot images or --bank, not both")
    tiling = None if tiles is None else Tiling.parse(tiles)
    if tiling is not None and bank_file is not None:
        raise InputError("--tiles cuts the --shot images into tiles: give --shot images, "
                         "not --bank")  # fmt: skip
    if not queries:
        raise InputError("no query images given: list the images to score after the options")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if checkpoint is not None:
        require_files([checkpoint], "checkpoint")
    require_files(shot_images, "--shot image")
    require_files([bank_file] if bank_file else [], "--bank")
    require_files(queries, "query image")
    check_heatmap_size(heatmap_size)
    check_picture_folders(heatmaps)

    from inctrl.state import ReferenceBank  # torch: only once the arguments are sane

    with status("loading model"):
        model = load_model(checkpoint, clip_weights, device, precision, notice=warn)
        cut: Tiling | FrameTiling | None = None
        groups = ((0,),) if tiling is None else tiling.groups()
        if bank_file is not None:
            banks = [ReferenceBank.load(bank_file)]
        else:
            first = decode(shot_images[0], model.preprocessing, tiling=tiling)
            if tiling is not None:  # every shot and query a frame of the first shot's size
                cut = FrameTiling(tiling, first.frame, "the first --shot image's")
            shots = [first] + [decode(s, model.preprocessing, tiling=cut) for s in shot_images[1:]]
            # a bank per group of view positions: the grid's tiles, the whole view
            banks = [model.reference([shot.views[t] for shot in shots for t in group])
                     for group in groups]  # fmt: skip
        prior = model.text_prior(category)

    scored: list[Result] = []
    chunks = [list(queries[i : i + batch_size]) for i in range(0, len(queries), batch_size)]
    for chunk in track(chunks, description="scoring", console=stderr, disable=not interactive()):
        picture_size = heatmap_size if heatmaps is not None else None
        # once: scores and heatmaps
        decoded = [decode(query, model.preprocessing, picture_size, cut) for query in chunk]
        parts = []
        for group, group_bank in zip(groups, banks, strict=True):
            views = [image.views[t] for image in decoded for t in group]
            scores = model.score(views, group_bank, prior, batch_size=len(views))
            parts.append(Scores(*(field.cpu().numpy() for field in scores)))
        count = len(decoded[0].views)
        frames, decisive = frame_scores(view_scores(parts, groups, count), count)
        scored += to_results(
            [image.name for image in decoded],
            frames,
            model.preprocessing,
            frames=[image.frame for image in decoded],
            pictures=[image.picture for image in decoded],
            layouts=None if tiling is None else [image.layout for image in decoded],
            decisive=decisive,
        )
    return to_records(scored, heatmaps=heatmaps)


@app.command()
def score(
    queries: QueryImages = None,
    checkpoint: ModelCheckpoint = None,
    category: str = typer.Option(
        None,
        "--category",
        help="Product category, e.g. candle or metal_nut (picks the text prior).",
        show_default=False,
    ),
    shot: list[Path] = typer.Option(
        None,
        "--shot",
        "-s",
        help="A normal example image; repeat for k shots.",
        show_default=False,
    ),
    device: Device = "cpu",
    precision: str = typer.Option("fp32", help="Encoder precision: fp32, or fp16/bf16 on CUDA."),
    batch_size: BatchSize = 16,
    clip_weights: ClipWeights = None,
    heatmaps: Heatmaps = None,
    heatmap_size: HeatmapSize = DEFAULT_HEATMAP_SIZE,
    tiles: TilesOption = None,
    bank: Path = typer.Option(
        None,
        help="A saved ReferenceBank (inctrl prompts make) instead of --shot images.",
        show_default=False,
    ),
    as_json: JsonFlag = False,
) -> None:
    """Score QUERIES against a few normal --shot images of one --category.

    Example: inctrl score -c inctrl_k2.pyth --category candle -s good1.png -s good2.png q.png
    """
    print_scored(
        lambda: run_score(
            checkpoint,
            category,
            shot or [],
            queries or [],
            device=device,
            precision=precision,
            batch_size=batch_size,
            clip_weights=clip_weights,
            heatmaps=heatmaps,
            bank_file=bank,
            heatmap_size=heatmap_size,
            tiles=tiles,
        ),
        as_json,
    )
