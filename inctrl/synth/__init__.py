"""A deterministic generator of a small anomaly data set in the MVTec AD layout (docs/model.md,
"Data formats"), for tests, a demo model and users without data. numpy and Pillow only.

Every image is drawn from its own generator, seeded by (seed, category, split, label, index), so
one seed always gives the same PNG bytes and any single image can be re-rendered in memory
(``render``). An anomalous test image is a normal image of its category with one defect painted
on; ``render(..., clean=True)`` gives that normal image, so the effect of a defect can be measured.

Frames may be non-square (``size=(width, height)``): the product is drawn on a square of the
longer side and the frame cut from its middle. Defects come at their usual size (scaled with the
frame's shorter side) or ``small`` (painted at the scale of a 100-160 px window, so about 5-30 px
across, anywhere on the frame, the background included: debris), and then every third defective
image of a non-square frame has its defect in the band at either end of the longer side that a
centre crop cuts off.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from inctrl.synth.defects import DEFECTS, PAINTERS
from inctrl.synth.products import BY_NAME, CATEGORIES, Category, draw_normal
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import staging_folder

__all__ = [
    "CATEGORIES",
    "DEFECTS",
    "Category",
    "SynthImage",
    "render",
    "split_counts",
    "synthesize",
]

MIN_SIZE = 32
MAX_SIZE = 1024
DEFECT_SIZES = ("default", "small")
_SMALL_WINDOW = (100, 160)  # the side of the square a small defect is painted in, in pixels
Size = int | tuple[int, int]  # a square's side, or (width, height)


class SynthImage(NamedTuple):
    """One rendered image: H x W x 3 uint8 RGB, and H x W bool defect mask (all False if good)."""

    image: np.ndarray
    mask: np.ndarray


# ---------------------------------------------------------------------------------------------
# Public API


def _rng(
    seed: int, category: str, split: str, label: str, index: int, stream: int
) -> np.random.Generator:
    """The generator of one image's product (stream 0) or its defect (stream 1)."""
    key = [seed, zlib.crc32(category.encode()), zlib.crc32(f"{split}/{label}".encode()), index]
    return np.random.default_rng([*key, stream])


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    too_high = high is not None and value > high
    if isinstance(value, bool) or not isinstance(value, int) or value < low or too_high:
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InputError(f"{name} must be an integer {bounds}; got {value!r}")


def render(
    category: str,
    split: str,
    label: str,
    index: int,
    *,
    seed: int = 0,
    size: Size = 256,
    clean: bool = False,
    defects: str = "default",
) -> SynthImage:
    """Render one image of the data set in memory, exactly as ``synthesize`` writes it.

    ``split`` is ``train`` or ``test``, ``label`` is ``good`` or one of ``DEFECTS`` (test only).
    ``size`` is a square's side or (width, height); ``defects`` is ``default`` or ``small``.
    ``clean=True`` gives the defect-free image a defect is painted on, with an empty mask.
    """
    if category not in BY_NAME:
        raise InputError(f"unknown category {category!r}; choose one of {', '.join(BY_NAME)}")
    if (split, label) != ("train", "good") and (split != "test" or label not in ("good", *DEFECTS)):
        raise InputError(
            f"no {split}/{label} images; use train/good, test/good or test/<defect> with a "
            f"defect among {', '.join(DEFECTS)}"
        )
    _check_int("seed", seed, 0)
    _check_int("index", index, 0)
    width, height = frame_size(size)
    _check_defects(defects)
    own = BY_NAME[category]
    side = max(width, height)
    image, product = draw_normal(own, _rng(seed, category, split, label, index, 0), side)
    top, left = (side - height) // 2, (side - width) // 2
    image = image[top : top + height, left : left + width]
    product = product[top : top + height, left : left + width]
    mask = np.zeros((height, width), dtype=bool)
    if label != "good" and not clean:
        defect_rng = _rng(seed, category, split, label, index, 1)
        x, y, window = _defect_window(defect_rng, width, height, defects, edge=index % 3 == 2)
        part = (slice(y, y + window), slice(x, x + window))
        surface = np.ones_like(product[part]) if defects == "small" else product[part]
        painted, mask[part] = PAINTERS[label](defect_rng, image[part], surface, own)
        image = image.copy()
        image[part] = painted
    return SynthImage(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mask)


def frame_size(size: Size) -> tuple[int, int]:
    """(width, height) of a frame size given as a side or as (width, height), each side
    checked."""
    if isinstance(size, int):
        _check_int("size", size, MIN_SIZE, MAX_SIZE)
        return size, size
    width, height = size
    _check_int("width", width, MIN_SIZE, MAX_SIZE)
    _check_int("height", height, MIN_SIZE, MAX_SIZE)
    return width, height


def _check_defects(defects: str) -> None:
    if defects not in DEFECT_SIZES:
        raise InputError(f"unknown defect size {defects!r}; choose {' or '.join(DEFECT_SIZES)}")


def _defect_window(
    rng: np.random.Generator, width: int, height: int, defects: str, edge: bool
) -> tuple[int, int, int]:
    """The square (left, top, side) a defect is painted in: the frame's square for usual
    defects (at a random place along a non-square frame's longer side), a 100-160 px one
    anywhere for small defects, and for ``edge`` small defects of a non-square frame one in the
    band that a centre crop cuts off at either end of its longer side."""
    short, long = min(width, height), max(width, height)
    if defects == "default":
        offset = int(rng.integers(0, long - short + 1)) if long > short else 0
        return (offset, 0, short) if width >= height else (0, offset, short)
    side = min(int(rng.integers(_SMALL_WINDOW[0], _SMALL_WINDOW[1] + 1)), short)
    band = (long - short) // 2
    along = int(rng.integers(0, long - side + 1))
    if edge and band >= _SMALL_WINDOW[0] // 2:
        side = min(side, band)
        near = int(rng.integers(0, band - side + 1))
        along = near if rng.random() < 0.5 else long - side - near
    across = int(rng.integers(0, short - side + 1))
    return (along, across, side) if width >= height else (across, along, side)


def split_counts(images_per_category: int) -> dict[str, dict[str, int]]:
    """How many images each folder of a category gets: ``n`` train/good, ``max(1, n // 2)``
    test/good and ``max(1, n // 4)`` per defect type (n = 12: 12 train, 6 good and 3 of each of
    the five defects in test)."""
    per_defect = max(1, images_per_category // 4)
    return {
        "train": {"good": images_per_category},
        "test": {"good": max(1, images_per_category // 2), **dict.fromkeys(DEFECTS, per_defect)},
    }


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def _write_category(
    folder: Path, category: str, seed: int, size: Size, counts: dict, defects: str
) -> None:
    for split, labels in counts.items():
        for label, count in labels.items():
            for index in range(count):
                sample = render(
                    category, split, label, index, seed=seed, size=size, defects=defects
                )
                _save_png(sample.image, folder / split / label / f"{index:03d}.png")
                if label != "good":
                    mask = sample.mask.astype(np.uint8) * 255
                    _save_png(mask, folder / "ground_truth" / label / f"{index:03d}_mask.png")


def _check_root(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise InputError(f"{root}: exists and is not a folder; choose a new folder for the data")
    if root.is_dir() and any(root.iterdir()):
        raise InputError(
            f"{root}: folder is not empty; choose a new folder or delete this one first "
            "(synthetic data never overwrites anything)"
        )


def synthesize(
    root: str | os.PathLike,
    seed: int = 0,
    categories: int = 4,
    images_per_category: int = 12,
    size: Size = 256,
    defects: str = "default",
) -> dict:
    """Write a synthetic anomaly data set in the MVTec AD layout under ``root``.

    ``root/<category>/train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png`` (L-mode, 0 or 255, same size as the image), for the
    first ``categories`` of ``CATEGORIES``; ``split_counts`` says how many images go where.
    Images are ``size`` x ``size`` RGB, or ``size`` = (width, height); ``defects`` is
    ``default`` or ``small`` (``render``). The same seed gives byte-identical files.

    The data set is written into a hidden sibling folder and renamed to ``root`` at the end, so
    ``root`` is either complete or absent. ``root`` must not exist or be an empty folder.

    Returns a JSON-ready summary: root, seed, size, total image count and, per category, its kind
    and the image count of every split and label.
    """
    root = Path(root)
    _check_int("seed", seed, 0)
    _check_int("categories", categories, 1, len(CATEGORIES))
    _check_int("images_per_category", images_per_category, 1)
    width, height = frame_size(size)
    _check_defects(defects)
    _check_root(root)
    counts = split_counts(images_per_category)
    chosen = CATEGORIES[:categories]
    with staging_folder(root) as staging:
        for category in chosen:
            _write_category(staging / category.name, category.name, seed, size, counts, defects)
        if root.is_dir():
            root.rmdir()  # checked empty above; a folder that filled up meanwhile fails here
        staging.rename(root)
    per_category = sum(sum(labels.values()) for labels in counts.values())
    return {
        "root": str(root),
        "seed": seed,
        "size": size if width == height and isinstance(size, int) else [width, height],
        "defects": defects,
        "images": per_category * len(chosen),
        "categories": {
            c.name: {"kind": c.kind, **split_counts(images_per_category)} for c in chosen
        },
    }
