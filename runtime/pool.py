"""Registering a category from a pool of normal images (``inctrl-run register --pool``).

k prompts selected from the pool are registered with the record of how they were chosen; when
part of the pool was set apart for calibration (``selection.split_pool``), the category is then
calibrated on that part, which the selection never saw. Nothing here prints: the caller shows
progress and says what was chosen and calibrated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from inctrl_runtime.decisions import Calibration
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import pixel_digest

if TYPE_CHECKING:
    from inctrl_runtime.detector import Detector

# A progress display: entered with what runs and how many items, it yields the update that
# takes the number done.
Progress = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


def no_progress(description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
    """The ``Progress`` that shows nothing."""
    return contextlib.nullcontext(lambda done: None)


@dataclass(frozen=True)
class PoolRegistration:
    """What ``register_from_pool`` chose and kept."""

    chosen: tuple[Path, ...]  # the prompts: pool images, in the order selected
    pool: int  # the images the selection saw
    method: str  # how they were selected: coverage or random
    mean_residual: float  # the pool's mean nearest-prompt patch residual with these prompts
    bank: Path  # the bank file written, references/<category>.npz
    calibration: Calibration | None = None  # on the images set apart (None: none were)


def register_from_pool(
    detector: Detector,
    category: str,
    pool: Sequence[Path],
    shots: int,
    select: str = "coverage",
    seed: int = 0,
    set_apart: Sequence[Path] = (),
    batch_size: int = 16,
    progress: Progress = no_progress,
    selected: Callable[[PoolRegistration], None] = lambda registration: None,
) -> PoolRegistration:
    """Select k = ``shots`` prompts from ``pool`` (``Detector.select``: ``select`` is coverage
    or random, seeded by ``seed``), register them with the record of how they were chosen, and
    calibrate the category on the images ``set_apart``, if any.

    Every image of both parts is read before anything is written: one set apart with the
    pixels of a pool image is refused, as the selection would have seen it. ``selected`` hears
    of the prompts before they are registered; the result adds the calibration.
    """
    detector.bundle.prior(category)  # an unknown category fails before any work
    if set_apart:
        _check_unseen(detector, pool, set_apart)
    with progress(f"encoding {len(pool)} pool images", len(pool)) as update:
        selection = detector.select(pool, shots, select, seed, category, batch_size, update)
    registration = PoolRegistration(
        chosen=tuple(pool[i] for i in selection.indices),
        pool=len(pool),
        method=select,
        mean_residual=selection.mean_residual,
        bank=detector.bundle.reference_path(category),
    )
    selected(registration)
    record = {
        "method": select,
        "pool": len(pool),
        "seed": seed,
        "mean_residual": selection.mean_residual,
        "calibration_set_apart": len(set_apart),
    }
    with progress(f"encoding {shots} prompts", shots) as update:
        detector.register(category, list(registration.chosen), batch_size, selection=record)
        update(shots)
    if not set_apart:
        return registration
    with progress("calibrating", len(set_apart)) as update:
        calibration = detector.calibrate(category, list(set_apart), batch_size, update)
    return replace(registration, calibration=calibration)


def _check_unseen(detector: Detector, pool: Sequence[Path], set_apart: Sequence[Path]) -> None:
    """Refuse an image set apart whose pixels are those of a pool image (a copy under another
    name): calibrating on it would bias the false-positive rate low."""
    seen = {pixel_digest(detector.pixels([image])[0]): image for image in pool}
    for image in set_apart:
        twin = seen.get(pixel_digest(detector.pixels([image])[0]))
        if twin is not None:
            raise InputError(
                f"{image}: holds the same pixels as {twin}, which the selection sees; remove "
                "one of them from the pool (calibration images must be unseen)"
            )
