"""``inctrl-run register`` and ``unregister``: a category's reference bank, from normal images
given or selected from a pool, kept in the bundle (``references/<category>.npz``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from inctrl_runtime.cli.common import (
    BundleArgument,
    CategoryOption,
    DeviceOption,
    ThreadsOption,
    app,
    open_detector,
)
from inctrl_runtime.console import (
    BatchSize,
    TilesOption,
    progress_bar,
    require_category,
    require_files,
    say,
    status,
    warn,
)
from inctrl_runtime.decisions import DEFAULT_FPR, threshold
from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl_runtime.pool import PoolRegistration


def run_register(
    bundle: Path,
    category: str | None,
    shot_images: Sequence[Path] = (),
    device: str = "cpu",
    threads: int | None = None,
    pool: Path | None = None,
    shots: int | None = None,
    select: str | None = None,
    seed: int = 0,
    calibrate: bool = False,
    batch_size: int = 16,
    tiles: str | None = None,
) -> Path:
    """Encode the ``shot_images`` of a category into ``references/<category>.npz``; returns
    its path. ``tiles`` (``RxC``) makes a tiled bank: each shot's tiles are its prompts, and
    the category's queries are then scored tile by tile (``inctrl_runtime.tiling``); from a
    pool, prompts are then selected by the coverage of the pool's tiles.

    With a ``pool`` folder instead, k = ``shots`` prompts are selected from its images
    (``select``: ``coverage``, the default, or ``random``, seeded by ``seed``) and registered;
    with ``calibrate``, half the pool is first set apart by a seeded split (``split_pool``),
    the selection sees only the other half, and the category is then calibrated on the half
    set apart. The chosen files, the mean patch residual and the calibration go to stderr.
    """
    from inctrl_runtime.fewshot import list_images
    from inctrl_runtime.pool import register_from_pool
    from inctrl_runtime.selection import SELECTIONS, split_pool
    from inctrl_runtime.tiling import Tiling

    require_category(category)
    tiling = None if tiles is None else Tiling.parse(tiles)
    if pool is None:
        if shots is not None or select is not None or calibrate:
            raise InputError("--shots, --select and --calibrate choose from a --pool DIR: add one")
        if not shot_images:
            raise InputError("no --shot given: add at least one normal image, e.g. --shot good.png")
        require_files(shot_images, "--shot image")
        detector = open_detector(bundle, device, threads)
        tiled = "" if tiling is None else f", {tiling.describe()} each"
        with status(f"encoding {len(shot_images)} normal images{tiled}"):
            detector.register(category, list(shot_images), batch_size, tiling=tiling)
        return detector.bundle.reference_path(category)
    if shot_images:
        raise InputError("--pool and --shot exclude each other: give a folder or the shots")
    if shots is None:
        raise InputError("no --shots given: say how many prompts to select, e.g. --shots 2")
    select = "coverage" if select is None else select
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
    part, apart = split_pool(images, seed, category, shots=shots) if calibrate else (images, [])
    detector = open_detector(bundle, device, threads)
    registration = register_from_pool(
        detector,
        category,
        part,
        shots,
        select=select,
        seed=seed,
        set_apart=apart,
        batch_size=batch_size,
        progress=progress_bar,
        selected=_say_selected,
        tiling=tiling,
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
    return registration.bank_file


def _say_selected(registration: PoolRegistration) -> None:
    say(
        f"selected {len(registration.chosen)} of {registration.pool_size} images by "
        f"{registration.method} (mean patch residual {registration.mean_residual:.4f}): "
        f"{', '.join(map(str, registration.chosen))}"
    )


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
    tiles: TilesOption = None,
    device: str = DeviceOption,
    threads: int = ThreadsOption,
    batch_size: BatchSize = 16,
) -> None:
    """Keep a category's normal examples in the bundle.

    Encodes a few normal --shot images of a --category once into references/<category>.npz,
    for later `inctrl-run score` calls; or selects them from a --pool folder of normal images,
    and with --calibrate calibrates on the images set apart.

    Examples:

        inctrl-run register bundle/ --category candle -s good1.png -s good2.png

        inctrl-run register bundle/ --category candle --pool good/ --shots 2 --calibrate

        inctrl-run register bundle/ --category pcb --tiles 3x4 -s frame1.png -s frame2.png
    """
    path = run_register(
        bundle,
        category,
        shot_images=shot or [],
        device=device,
        threads=threads,
        pool=pool,
        shots=shots,
        select=select,
        seed=seed,
        calibrate=calibrate,
        batch_size=batch_size,
        tiles=tiles,
    )
    say(f"registered {shots if pool else len(shot)} shots of {category!r} in {path}")


@app.command()
def unregister(bundle: Path = BundleArgument, category: str = CategoryOption) -> None:
    """Remove a category's registered bank and its calibration.

    Deletes references/<category>.npz of the --category.

    Example: inctrl-run unregister bundle/ --category candle
    """
    path = run_unregister(bundle, category)
    say(f"unregistered {category!r}: removed {path}")
