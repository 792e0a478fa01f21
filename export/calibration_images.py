"""Which images an int8 export calibrates on: a list given, a folder of normal images, an
MVTec-layout category or data set (its ``train/good`` images, by the layout's one rule in
``inctrl_runtime.datasets``), or, for the embedded demo, its own synthetic normals.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from inctrl_runtime.datasets import is_category_folder, normal_images
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import list_images
from inctrl_runtime.preprocess import ImageSource, Preprocessing, preprocess_many

# The demo's calibration: this many train/good normals of each of its categories, rendered in
# memory with a seed the demo's training data never used.
DEMO_IMAGES_PER_CATEGORY = 5
DEMO_CALIBRATION_SEED = 9001
DEMO_IMAGE_SIZE = 256
# A larger --calibration folder is thinned to this many images, evenly spaced in name order.
MAX_CALIBRATION_IMAGES = 200
# Where an int8 export's calibration images come from: a folder, or the images themselves.
CalibrationImages = str | os.PathLike | Sequence[ImageSource]


def calibration_images(calibration: CalibrationImages) -> list[ImageSource]:
    """The images to calibrate on: a list as given, or from a folder: a category folder in
    MVTec layout gives its train/good images; a data set root whose subfolders are category
    folders gives the train/good images of each; any other folder the images directly in it.
    More than ``MAX_CALIBRATION_IMAGES`` are thinned, evenly spaced in name order."""
    if not isinstance(calibration, (str, os.PathLike)):
        images = list(calibration)
        if not images:
            raise InputError("no calibration images given")
        return _thinned(images)
    folder = Path(calibration)
    if not folder.is_dir():
        raise InputError(f"--calibration {folder}: no such folder of images")
    categories = [folder] if is_category_folder(folder) else sorted(
        f for f in folder.iterdir() if f.is_dir() and is_category_folder(f)
    )  # fmt: skip
    if categories:
        images = [path for category in categories for path in normal_images(category)]
        where = "in train/good"
    else:
        images, where = list_images(folder), "directly in it"
    if not images:
        raise InputError(
            f"--calibration {folder}: no images {where}; give a folder of normal images, or "
            "an MVTec-layout category (or data set) folder whose train/good holds them"
        )
    return _thinned(images)


def _thinned(images: list[ImageSource]) -> list[ImageSource]:
    if len(images) <= MAX_CALIBRATION_IMAGES:
        return images
    picks = np.linspace(0, len(images) - 1, MAX_CALIBRATION_IMAGES).round().astype(int)
    return [images[i] for i in picks]


def demo_calibration_images() -> list[np.ndarray]:
    """Synthetic train/good normals of the demo's categories, rendered in memory
    (``inctrl.synth.render``: the same images every time)."""
    from inctrl.demo import HELD_OUT_CATEGORIES, TRAIN_CATEGORIES
    from inctrl.synth import render

    return [
        render(category, "train", "good", index, seed=DEMO_CALIBRATION_SEED,
               size=DEMO_IMAGE_SIZE).image
        for category in (*TRAIN_CATEGORIES, *HELD_OUT_CATEGORIES)
        for index in range(DEMO_IMAGES_PER_CATEGORY)
    ]  # fmt: skip


def calibration_pixels(images: Sequence[ImageSource], preprocessing: Preprocessing) -> np.ndarray:
    """The calibration images as the runtime feeds them to the encoder: N x 3 x S x S."""
    return preprocess_many(list(images), preprocessing)
