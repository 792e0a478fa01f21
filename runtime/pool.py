"""Choosing prompts from a pool of normal images, and registering a category from it
(``inctrl-run register --pool``).

``select_prompts`` encodes the pool with the detector's batch loop and chooses k prompts
(``inctrl_runtime.selection``). ``register_from_pool`` registers them with the record of how
they were chosen; when part of the pool was set apart for calibration
(``selection.split_pool``), the category is then calibrated on that part, which the selection
never saw. Nothing here prints: the caller shows progress and says what was chosen and
calibrated.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from inctrl_runtime.batches import EncodedBatch, ProgressUpdate
from inctrl_runtime.decisions import Calibration
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import stack_prompts
from inctrl_runtime.preprocess import ImageSource, checked_images, describe, pixel_digest
from inctrl_runtime.selection import (
    SELECTIONS,
    Selection,
    coverage_selection,
    mean_residual,
    random_draw,
)
from inctrl_runtime.tiling import Tiling

# A progress display: entered with what runs and how many items, it yields the update that
# takes the number done (``batches.ProgressUpdate``).
ProgressDisplay = Callable[[str, int], AbstractContextManager[ProgressUpdate]]


def no_progress(description: str, total: int) -> AbstractContextManager[Callable[[int], None]]:
    """The ``ProgressDisplay`` that shows nothing."""
    return contextlib.nullcontext(lambda done: None)


@dataclass(frozen=True)
class PoolRegistration:
    """What ``register_from_pool`` chose and kept."""

    chosen: tuple[Path, ...]  # the prompts: pool images, in the order selected
    pool_size: int  # the images the selection saw
    method: str  # how they were selected: coverage or random
    mean_residual: float  # the pool's mean nearest-prompt patch residual with these prompts
    bank_file: Path  # the bank file written, references/<category>.npz
    calibration: Calibration | None = None  # on the images set apart (None: none were)


def select_prompts(
    detector: Detector,
    pool: ImageSource | Sequence[ImageSource],
    shots: int,
    method: str = "coverage",
    seed: int = 0,
    category: str = "",
    batch_size: int = 16,
    progress: ProgressUpdate | None = None,
    tiling: Tiling | None = None,
) -> Selection:
    """Choose k = ``shots`` prompts from a pool of normal images (``inctrl_runtime.selection``):
    ``coverage`` covers the pool's patch tokens best; ``random`` is the seeded draw of
    ``inctrl evaluate`` for (seed, category), from the pool sorted by name (a path's text).
    The pool is encoded batch by batch (``progress`` gets the number done); its patch tokens
    are held once (n x L x P x D float32). With ``tiling``, an image's patch tokens are all its
    tiles' (n x L x T * P x D), as a tiled bank compares them: coverage then costs T^2 times
    as much. Returns indices into the pool and the pool's mean patch residual with those
    prompts; ``Detector.register`` the chosen images."""
    images = checked_images(pool, batch_size, empty=None)
    if method not in SELECTIONS:
        raise InputError(f"unknown selection {method!r}: choose {' or '.join(SELECTIONS)}")
    if not 0 < shots <= len(images):
        raise InputError(f"cannot select {shots} prompts from {len(images)} images")
    batches = detector.encoded_batches(images, batch_size, progress=progress, tiling=tiling)
    patches = np.concatenate([_by_image(batch) for batch in batches])
    if method == "coverage":
        return coverage_selection(patches, shots)
    names = [describe(source) for source in images]
    drawn = random_draw(range(len(images)), shots, seed, category, key=names.__getitem__)
    return Selection(tuple(drawn), mean_residual(patches, drawn))


def _by_image(batch: EncodedBatch) -> np.ndarray:
    """A batch's patch tokens image by image, n x L x (V * P) x D: a tiled frame's V tiles'
    patches side by side, as a tiled bank holds them (``stack_prompts`` per image)."""
    patches = batch.features[0]["patches"]  # (n * V) x L x P x D
    n = len(batch.names)
    return stack_prompts(patches.reshape(n, len(patches) // n, *patches.shape[1:]))


def register_from_pool(
    detector: Detector,
    category: str,
    pool: Sequence[Path],
    shots: int,
    select: str = "coverage",
    seed: int = 0,
    set_apart: Sequence[Path] = (),
    batch_size: int = 16,
    progress: ProgressDisplay = no_progress,
    selected: Callable[[PoolRegistration], None] = lambda registration: None,
    tiling: Tiling | None = None,
) -> PoolRegistration:
    """Select k = ``shots`` prompts from ``pool`` (``select_prompts``: ``select`` is coverage
    or random, seeded by ``seed``), register them with the record of how they were chosen, and
    calibrate the category on the images ``set_apart``, if any; with ``tiling``, the prompts
    are selected and registered tile by tile (``select_prompts``).

    Every image of both parts is read before anything is written: one set apart with the
    pixels of a pool image is refused, as the selection would have seen it. ``selected`` hears
    of the prompts before they are registered; the result adds the calibration.
    """
    detector.bundle.prior(category)  # an unknown category fails before any work
    if set_apart:
        _check_unseen(detector, pool, set_apart)
    with progress(f"encoding {len(pool)} pool images", len(pool)) as update:
        selection = select_prompts(
            detector, pool, shots, select, seed=seed, category=category, batch_size=batch_size,
            progress=update, tiling=tiling,
        )  # fmt: skip
    registration = PoolRegistration(
        chosen=tuple(pool[i] for i in selection.indices),
        pool_size=len(pool),
        method=select,
        mean_residual=selection.mean_residual,
        bank_file=detector.bundle.reference_path(category),
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
        detector.register(
            category, list(registration.chosen), batch_size, selection=record, tiling=tiling
        )
        update(shots)
    if not set_apart:
        return registration
    with progress("calibrating", len(set_apart)) as update:
        calibration = detector.calibrate(category, list(set_apart), batch_size, update)
    return replace(registration, calibration=calibration)


def _check_unseen(detector: Detector, pool: Sequence[Path], set_apart: Sequence[Path]) -> None:
    """Refuse an image set apart whose pixels are those of a pool image (a copy under another
    name): calibrating on it would bias the false-positive rate low."""
    seen = {pixel_digest(detector.pixels(image)[0]): image for image in pool}
    for image in set_apart:
        twin = seen.get(pixel_digest(detector.pixels(image)[0]))
        if twin is not None:
            raise InputError(
                f"{image}: holds the same pixels as {twin}, which the selection sees; remove "
                "one of them from the pool (calibration images must be unseen)"
            )
