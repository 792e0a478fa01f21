"""A deterministic generator of a small anomaly data set in the MVTec AD layout (docs/model.md,
"Data formats"), for tests, a demo model and users without data. numpy and Pillow only.

Every image is drawn from its own generator, seeded by (seed, category, split, label, index), so
one seed always gives the same PNG bytes and any single image can be re-rendered in memory
(``render``). An anomalous test image is a normal image of its category with one defect painted
on; ``render(..., clean=True)`` gives that normal image, so the effect of a defect can be measured.
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
    size: int = 256,
    clean: bool = False,
) -> SynthImage:
    """Render one image of the data set in memory, exactly as ``synthesize`` writes it.

    ``split`` is ``train`` or ``test``, ``label`` is ``good`` or one of ``DEFECTS`` (test only).
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
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    own = BY_NAME[category]
    image, product = draw_normal(own, _rng(seed, category, split, label, index, 0), size)
    mask = np.zeros((size, size), dtype=bool)
    if label != "good" and not clean:
        defect_rng = _rng(seed, category, split, label, index, 1)
        image, mask = PAINTERS[label](defect_rng, image, product, own)
    return SynthImage(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8), mask)


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


def _write_category(folder: Path, category: str, seed: int, size: int, counts: dict) -> None:
    for split, labels in counts.items():
        for label, count in labels.items():
            for index in range(count):
                sample = render(category, split, label, index, seed=seed, size=size)
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
    size: int = 256,
) -> dict:
    """Write a synthetic anomaly data set in the MVTec AD layout under ``root``.

    ``root/<category>/train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png`` (L-mode, 0 or 255, same size as the image), for the
    first ``categories`` of ``CATEGORIES``; ``split_counts`` says how many images go where.
    Images are ``size`` x ``size`` RGB. The same seed gives byte-identical files.

    The data set is written into a hidden sibling folder and renamed to ``root`` at the end, so
    ``root`` is either complete or absent. ``root`` must not exist or be an empty folder.

    Returns a JSON-ready summary: root, seed, size, total image count and, per category, its kind
    and the image count of every split and label.
    """
    root = Path(root)
    _check_int("seed", seed, 0)
    _check_int("categories", categories, 1, len(CATEGORIES))
    _check_int("images_per_category", images_per_category, 1)
    _check_int("size", size, MIN_SIZE, MAX_SIZE)
    _check_root(root)
    counts = split_counts(images_per_category)
    chosen = CATEGORIES[:categories]
    with staging_folder(root) as staging:
        for category in chosen:
            _write_category(staging / category.name, category.name, seed, size, counts)
        if root.is_dir():
            root.rmdir()  # checked empty above; a folder that filled up meanwhile fails here
        staging.rename(root)
    per_category = sum(sum(labels.values()) for labels in counts.values())
    return {
        "root": str(root),
        "seed": seed,
        "size": size,
        "images": per_category * len(chosen),
        "categories": {
            c.name: {"kind": c.kind, **split_counts(images_per_category)} for c in chosen
        },
    }
