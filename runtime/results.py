"""Scores as the runtime returns them, and the records, tables and heatmaps made from them.

``Scores`` mirrors ``inctrl.Scores`` field for field (a test holds them equal); the JSON records
are the same for ``inctrl score`` and ``inctrl-run score``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from inctrl_runtime.heatmap import heatmap_overlay, save_heatmap
from inctrl_runtime.preprocess import ImageSource, Preprocessing, describe, load_image


class Scores(NamedTuple):
    """Every head output for a batch of B queries (numpy; the fields of ``inctrl.Scores``)."""

    score: np.ndarray  # B
    holistic_score: np.ndarray  # B
    image_residual_score: np.ndarray  # B
    text_score: np.ndarray  # B
    max_patch_residual: np.ndarray  # B
    patch_residual_map: np.ndarray  # B x P


SCORE_FIELDS = Scores._fields


@dataclass(frozen=True)
class Result:
    """One query's scores, with what is needed to draw its heatmap."""

    image: str
    source: ImageSource
    score: float
    holistic_score: float
    image_residual_score: float
    text_score: float
    max_patch_residual: float
    patch_residual_map: np.ndarray  # P, row-major over the patch grid
    preprocessing: Preprocessing

    def record(self) -> dict:
        """The JSON record of ``inctrl score --json``: the image and every head output."""
        values = {name: getattr(self, name) for name in SCORE_FIELDS}
        values["patch_residual_map"] = self.patch_residual_map.tolist()
        return {"image": self.image, **values}

    def heatmap(self) -> Image.Image:
        """The patch residual map, upsampled and colored, over the picture the model saw."""
        return heatmap_overlay(
            load_image(self.source), self.patch_residual_map, config=self.preprocessing
        )

    def save_heatmap(self, path: str | os.PathLike) -> None:
        """Write ``heatmap()`` as a PNG, atomically."""
        save_heatmap(load_image(self.source), self.patch_residual_map, path, self.preprocessing)


def results(
    sources: Sequence[ImageSource], scores: Scores, preprocessing: Preprocessing
) -> list[Result]:
    """One Result per query, in order."""
    scalars = {name: getattr(scores, name).tolist() for name in SCORE_FIELDS[:-1]}
    return [
        Result(
            image=describe(source),
            source=source,
            **{name: values[i] for name, values in scalars.items()},
            patch_residual_map=scores.patch_residual_map[i],
            preprocessing=preprocessing,
        )
        for i, source in enumerate(sources)
    ]


def write_heatmaps(
    records: list[dict], folder: str | os.PathLike, preprocessing: Preprocessing
) -> None:
    """A heatmap PNG per record (``NNNN_<image stem>.png``); each record gets its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(records):
        path = folder / f"{index:04d}_{Path(record['image']).stem}.png"
        image = load_image(record["image"])
        save_heatmap(image, np.asarray(record["patch_residual_map"]), path, preprocessing)
        record["heatmap"] = str(path)


def print_table(records: list[dict], title: str = "InCTRL anomaly scores") -> None:
    """A readable table of the scalar scores (higher = more anomalous) on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (higher = more anomalous)")
    table.add_column("image", overflow="fold", ratio=1)
    for header in ("score", "holistic", "image res.", "text", "max patch"):
        table.add_column(header, justify="right", no_wrap=True)
    for record in records:
        table.add_row(record["image"], *(f"{record[n]:.4f}" for n in SCORE_FIELDS[:-1]))
    Console().print(table)
