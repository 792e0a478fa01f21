"""Data sets in MVTec layout (numpy-free and torch-free: only paths and labels).

A folder is either a data set root (``<root>/<category>/train/good/...``) or one category: a
folder with ``train/`` or ``test/``. A category's normal training images are ``train/good``;
its test images are ``test/<defect>/`` (``good`` for normal ones), with masks in
``ground_truth/<defect>/``. The one rule of the layout, for every package: the torch side's
data sets (``inctrl.data``), the int8 export's calibration images and the bench's ``--eval``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import list_images

NORMAL, ANOMALOUS = 0, 1


@dataclass(frozen=True)
class Sample:
    """One image with its label: ``target`` 0 normal, 1 anomalous; ``split`` train or test."""

    image_path: str
    target: int
    category: str
    split: str = "test"
    defect: str = "good"
    mask_path: str | None = None


def is_category_folder(folder: Path) -> bool:
    return (folder / "train").is_dir() or (folder / "test").is_dir()


def _mask_for(folder: Path, defect: str, image: Path) -> str | None:
    for candidate in (f"{image.stem}_mask.png", f"{image.stem}.png"):
        mask = folder / "ground_truth" / defect / candidate
        if mask.is_file():
            return str(mask)
    return None


def scan_category(folder: str | os.PathLike, category: str | None = None) -> list[Sample]:
    """All samples of one MVTec-layout category folder, train then test, sorted by path."""
    folder = Path(folder)
    category = category or folder.name
    samples = [Sample(str(p), NORMAL, category, "train") for p in normal_images(folder)]
    test = folder / "test"
    defects = sorted(d.name for d in test.iterdir() if d.is_dir()) if test.is_dir() else []
    for defect in ["good", *(d for d in defects if d != "good")]:
        target = NORMAL if defect == "good" else ANOMALOUS
        for image in list_images(test / defect):
            mask = _mask_for(folder, defect, image) if target == ANOMALOUS else None
            samples.append(Sample(str(image), target, category, "test", defect, mask))
    return samples


def category_folders(root: str | os.PathLike) -> list[Path]:
    """The category folders of a data set root, or the root itself if it is one category."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: no such data folder")
    if is_category_folder(root):
        return [root]
    folders = sorted(d for d in root.iterdir() if d.is_dir() and is_category_folder(d))
    if not folders:
        raise InputError(
            f"{root}: no MVTec-layout category here (expected <category>/train/good/*.png or "
            "<category>/test/<defect>/*.png)"
        )
    return folders


def normal_images(category: Path) -> list[Path]:
    """The normal training images of a category folder (``train/good``), sorted by name."""
    return list_images(category / "train" / "good")
