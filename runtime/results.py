"""The output contract: the head's ``Scores``, and one query's ``Result`` and its JSON record.

``Scores`` mirrors ``inctrl.Scores`` field for field (a test holds them equal); the two graphs
(``inctrl_runtime.contract``), the Triton models and the client all name their outputs after
its fields. A record is ``score_record``'s dict: the image, every scalar score, the decision
fields (``inctrl_runtime.decisions``, their one codec), then the patch map; ``inctrl score``,
``inctrl-run score`` and ``inctrl-run client`` all print it. Writing records, heatmap files and
tables is ``inctrl_runtime.output``'s business.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from inctrl_runtime.decisions import DECISION_FIELDS
from inctrl_runtime.files import atomic_path
from inctrl_runtime.heatmap import heatmap_overlay
from inctrl_runtime.preprocess import Preprocessing


class Scores(NamedTuple):
    """Every head output for a batch of B queries (numpy; the fields of ``inctrl.Scores``)."""

    score: np.ndarray  # B
    holistic_score: np.ndarray  # B
    image_residual_score: np.ndarray  # B
    text_score: np.ndarray  # B
    max_patch_residual: np.ndarray  # B
    patch_residual_map: np.ndarray  # B x P


SCORE_FIELDS = Scores._fields
# The one value per query; the patch map is P values per query.
SCALAR_FIELDS = tuple(name for name in SCORE_FIELDS if name != "patch_residual_map")


def score_record(image: str, values: Mapping[str, Any]) -> dict:
    """The JSON record of one query: ``image``, every scalar score, the decision fields (None
    where there is no decision), then ``patch_residual_map`` as a list; ``values`` maps each
    field name to its value."""
    return {
        "image": image,
        **{name: float(values[name]) for name in SCALAR_FIELDS},
        **{name: values.get(name) for name in DECISION_FIELDS},
        "patch_residual_map": np.ravel(values["patch_residual_map"]).tolist(),
    }


@dataclass(frozen=True)
class Result:
    """One query's scores and, for a calibrated category, its decision, with the picture it was
    scored on, to draw its heatmap."""

    image: str
    view: Image.Image  # the resized, cropped RGB picture the model saw, decoded once
    score: float
    holistic_score: float
    image_residual_score: float
    text_score: float
    max_patch_residual: float
    patch_residual_map: np.ndarray  # P, row-major over the patch grid
    preprocessing: Preprocessing
    p_value: float | None = None  # (1 + #{calibration scores >= score}) / (n + 1)
    threshold: float | None = None  # the score threshold at the false-positive rate asked for
    anomalous: bool | None = None  # p_value <= that rate

    def record(self) -> dict:
        """The JSON record of ``inctrl score --json`` (``score_record``)."""
        return score_record(self.image, vars(self))

    def caption(self) -> str:
        """One line for the heatmap: the score and, when calibrated, the decision."""
        text = f"score {self.score:.4f}"
        if self.p_value is not None:
            text += f"  p {self.p_value:.3g}"
        if self.anomalous is not None:
            text += "  ANOMALOUS" if self.anomalous else "  normal"
        return text

    def heatmap(self, caption: bool = True) -> Image.Image:
        """The patch residual map, upsampled and colored, over the picture the model saw; with
        ``caption``, the score and decision (``caption()``) on a strip under it."""
        return heatmap_overlay(
            self.view,
            self.patch_residual_map,
            config=self.preprocessing,
            caption=self.caption() if caption else None,
        )

    def save_heatmap(self, path: str | os.PathLike) -> None:
        """Write ``heatmap()`` as a PNG, atomically."""
        with atomic_path(path) as tmp:
            self.heatmap().save(tmp, format="PNG")


def to_results(
    names: Sequence[str],
    views: Sequence[Image.Image],
    scores: Scores,
    preprocessing: Preprocessing,
    decisions: Sequence[Mapping[str, Any]] | None = None,
) -> list[Result]:
    """One Result per query, in order: its name, the picture it was scored on, its row of
    ``scores`` and its decision fields (``decisions.decision_fields``; None: none)."""
    scalars = {name: getattr(scores, name).tolist() for name in SCALAR_FIELDS}
    decided = decisions if decisions is not None else [{} for _ in names]
    return [
        Result(
            image=name,
            view=view,
            **{field: values[i] for field, values in scalars.items()},
            patch_residual_map=scores.patch_residual_map[i],
            preprocessing=preprocessing,
            **decided[i],
        )
        for i, (name, view) in enumerate(zip(names, views, strict=True))
    ]
