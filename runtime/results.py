"""The output contract: the head's ``Scores``, and one query's ``Result`` and its JSON record.

``Scores`` mirrors ``inctrl.Scores`` field for field (a test holds them equal); the two graphs
(``inctrl_runtime.contract``), the Triton models and the client all name their outputs after
its fields. A record is ``score_record``'s dict: the image, every scalar score, the decision
fields (``inctrl_runtime.decisions``, their one codec), where the defect is (the frame's size,
the share of it inspected, the region threshold and the regions: ``inctrl_runtime.regions``),
then the patch map; ``inctrl score``, ``inctrl-run score`` and ``inctrl-run client`` all print
it. Writing records, heatmap and mask files and tables is ``inctrl_runtime.output``'s business.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
from PIL import Image

from inctrl_runtime.decisions import DECISION_FIELDS
from inctrl_runtime.drift import Drift
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path
from inctrl_runtime.heatmap import heatmap_picture
from inctrl_runtime.preprocess import Preprocessing
from inctrl_runtime.regions import Framing, Region, RegionRule, region_mask
from inctrl_runtime.tiling import TileLayout, Tiling


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


# What a record says of where a query's defect is, after its decision fields.
REGION_FIELDS = ("frame_size", "inspected_fraction", "region_threshold", "regions")
# How a tiled frame was cut (the grid, its overlap, the tiles' side and boxes) and which tile
# decided its score: None for a frame scored whole.
TILE_FIELDS = ("tiling", "decisive_tile")


def view_scores(parts: Sequence[Scores], groups: Sequence[Sequence[int]], views: int) -> Scores:
    """The scores of B frames' T views (B * T rows, frame by frame, each frame's views in order)
    from the head's run on each view group (``Tiling.groups``: B * |g| rows, frame by frame, the
    group's views in order); one group's scores are returned as they are."""
    if len(parts) == 1:
        return parts[0]
    frames = len(parts[0].score) // len(groups[0])
    fields = []
    for name in Scores._fields:
        first = np.asarray(getattr(parts[0], name))
        out = np.empty((frames, views, *first.shape[1:]), dtype=first.dtype)
        for part, group in zip(parts, groups, strict=True):
            values = np.asarray(getattr(part, name))
            out[:, list(group)] = values.reshape(frames, len(group), *first.shape[1:])
        fields.append(out.reshape(frames * views, *first.shape[1:]))
    return Scores(*fields)


def frame_scores(scores: Scores, tiles: int) -> tuple[Scores, np.ndarray | None]:
    """B frames' scores from their B * T tiles' (frame by frame, each frame's tiles in tile
    order): a frame's ``score`` and ``max_patch_residual`` are the largest patch residual over
    its tiles (the stitched map's maximum), its holistic, image-residual and text scores are
    those of the tile that holds it, and its map is the T tiles' maps one after another (T * P
    values). Also each frame's deciding tile (the index of that tile). With T = 1 (frames
    scored whole) the scores are the frames' as they are, InCTRL's final score included, and
    there is no deciding tile (None).

    Why not the tiles' final scores: a tile's final score averages its largest patch residual
    with its holistic score, which judges the tile as a whole; a small defect moves the first,
    and the largest of T holistic scores grows with T on good frames too (docs/tiling.md
    measures both reductions)."""
    if tiles == 1:
        return scores, None
    frames = len(scores.score) // tiles
    by_frame = {name: np.asarray(getattr(scores, name)).reshape(frames, tiles, -1)
                for name in SCORE_FIELDS}  # fmt: skip
    decisive = by_frame["max_patch_residual"][:, :, 0].argmax(axis=1)
    rows = np.arange(frames)
    picked = {name: by_frame[name][rows, decisive, 0] for name in SCALAR_FIELDS}
    picked["score"] = picked["max_patch_residual"]
    patch_maps = by_frame["patch_residual_map"].reshape(frames, -1)
    return Scores(**picked, patch_residual_map=patch_maps), decisive


def score_record(image: str, values: Mapping[str, Any]) -> dict:
    """The JSON record of one query: ``image``, every scalar score, the decision fields (None
    where there is no decision), the region fields (``frame_size`` [width, height],
    ``inspected_fraction``, ``region_threshold`` and ``regions``: None where there are no
    regions, else a list of ``Region.record()``), the tile fields (``tiling``: the grid, its
    overlap, the tiles' side and boxes, and ``decisive_tile``: the tile whose score is the
    frame's; None for a frame scored whole), ``drift`` (the drift monitor after this part:
    evidence, alarm, observed; None unmonitored), then ``patch_residual_map`` as a list (a
    tiled frame's: its tiles' maps one after another); ``values`` maps each field name to its
    value."""
    regions = values.get("regions")
    threshold = values.get("region_threshold")
    return {
        "image": image,
        **{name: float(values[name]) for name in SCALAR_FIELDS},
        **{name: values.get(name) for name in DECISION_FIELDS},
        "frame_size": [int(side) for side in values["frame_size"]],
        "inspected_fraction": float(values["inspected_fraction"]),
        "region_threshold": None if threshold is None else float(threshold),
        "regions": None if regions is None else [dict(region) for region in regions],
        "tiling": values.get("tiling"),
        "decisive_tile": None
        if values.get("decisive_tile") is None
        else int(values["decisive_tile"]),
        "drift": values.get("drift"),
        "patch_residual_map": np.ravel(values["patch_residual_map"]).tolist(),
    }


@dataclass(frozen=True)
class Result:
    """One query's scores and, for a calibrated category, its decision and regions, with a
    picture of its frame to draw its heatmap on."""

    image: str
    score: float
    holistic_score: float
    image_residual_score: float
    text_score: float
    max_patch_residual: float
    patch_residual_map: np.ndarray  # P, row-major over the patch grid (tiled: T * P)
    framing: Framing | TileLayout  # the frame's size, and how the model's views lie in it
    picture: Image.Image | None = None  # the whole frame, capped (None: not kept)
    p_value: float | None = None  # (1 + #{calibration scores >= score}) / (n + 1)
    threshold: float | None = None  # the score threshold at the false-positive rate asked for
    anomalous: bool | None = None  # p_value <= that rate
    region_threshold: float | None = None  # a pixel above it is in a region (None: no regions)
    regions: tuple[Region, ...] | None = None  # largest peak first (None: no regions)
    decisive_tile: int | None = None  # the tile whose score is the frame's (None: untiled)
    drift: Drift | None = None  # the drift monitor after this part (None: not monitored)

    @classmethod
    def of_record(
        cls, record: Mapping[str, Any], size: int, picture: Image.Image | None = None
    ) -> Result:
        """A Result from its JSON record (e.g. a served answer's) for a model of input side
        ``size``, with ``picture`` of its frame to draw its heatmap on; its drift is left
        out."""
        width, height = record["frame_size"]
        tiling = record.get("tiling")
        framing: Framing | TileLayout = Framing(width, height, size)
        if tiling is not None:
            boxes = tuple(tuple(box) for box in tiling["boxes"])
            framing = TileLayout(Tiling.from_record(tiling), width, height, tiling["side"], size,
                                 boxes)  # fmt: skip
        regions = record.get("regions")
        return cls(
            image=record["image"],
            **{name: float(record[name]) for name in SCALAR_FIELDS},
            patch_residual_map=np.asarray(record["patch_residual_map"], dtype=np.float32),
            framing=framing,
            picture=picture,
            **{name: record.get(name) for name in DECISION_FIELDS},
            region_threshold=record.get("region_threshold"),
            regions=None
            if regions is None
            else tuple(Region(**{**r, "box": tuple(r["box"])}) for r in regions),
            decisive_tile=record.get("decisive_tile"),
        )

    def record(self) -> dict:
        """The JSON record of ``inctrl score --json`` (``score_record``)."""
        regions = None if self.regions is None else [r.record() for r in self.regions]
        return score_record(
            self.image,
            {
                **vars(self),
                "frame_size": (self.framing.width, self.framing.height),
                "inspected_fraction": self.framing.inspected_fraction,
                "regions": regions,
                "tiling": self.tiling,
                "drift": None if self.drift is None else self.drift.record(),
            },
        )

    @property
    def tiling(self) -> dict | None:
        """A tiled frame's grid, overlap, tile side and boxes (None: scored whole)."""
        return self.framing.record() if isinstance(self.framing, TileLayout) else None

    def caption(self) -> str:
        """One line for the heatmap: the score and, when calibrated, the decision and the
        number of regions; for a tiled frame, the deciding tile."""
        text = f"score {self.score:.4f}"
        if self.p_value is not None:
            text += f"  p {self.p_value:.3g}"
        if self.anomalous is not None:
            text += "  ANOMALOUS" if self.anomalous else "  normal"
        if self.regions is not None:
            text += f"  {len(self.regions)} region{'s' if len(self.regions) != 1 else ''}"
        if self.decisive_tile is not None:
            text += f"  {self.framing.view_name(self.decisive_tile)}"
        return text

    def heatmap(self, caption: bool = True) -> Image.Image:
        """The patch residual map coloured over the whole frame (the picture kept when it was
        decoded; a tiled frame's stitched map, its deciding tile outlined), the not-inspected
        band greyed, regions outlined, with a colour bar and, with ``caption``, the score and
        decision (``caption()``) under it."""
        if self.picture is None:
            raise InputError(
                f"{self.image}: no picture kept for its heatmap; score with a heatmap size "
                "(heatmap_size=..., --heatmaps)"
            )
        return heatmap_picture(
            self.picture,
            self.patch_residual_map,
            self.framing,
            caption=self.caption() if caption else None,
            regions=self.regions or (),
            region_threshold=self.region_threshold,
            tile=None if self.decisive_tile is None else self.framing.boxes[self.decisive_tile],
        )

    def mask(self) -> Image.Image:
        """The regions as an 8-bit mask of the frame's size (``regions.region_mask``: 255 in
        a region, 0 elsewhere, ``NOT_INSPECTED`` over the band the crop cut off)."""
        values = self.framing.map(self.patch_residual_map)
        return Image.fromarray(region_mask(values, self.region_threshold), mode="L")

    def save_heatmap(self, path: str | os.PathLike) -> None:
        """Write ``heatmap()`` as a PNG, atomically."""
        with atomic_path(path) as tmp:
            self.heatmap().save(tmp, format="PNG")


def to_results(
    names: Sequence[str],
    scores: Scores,
    preprocessing: Preprocessing,
    decisions: Sequence[Mapping[str, Any]] | None = None,
    rule: RegionRule | None = None,
    frames: Sequence[tuple[int, int]] | None = None,
    pictures: Sequence[Image.Image | None] | None = None,
    layouts: Sequence[TileLayout] | None = None,
    decisive: Sequence[int] | None = None,
    drifts: Sequence[Drift] | None = None,
) -> list[Result]:
    """One Result per query, in order: its name, its row of ``scores``, its decision fields
    (``decisions.decision_fields``; None: none), its regions under ``rule`` (None: no
    regions), its frame's size (width, height; None: the model's size, e.g. for pixels given
    as they are) and the picture kept of it for heatmaps (None: none). Tiled frames come with
    their ``layouts`` (which replace ``frames``; their ``scores`` are ``frame_scores``') and
    ``decisive`` tiles; a monitored call's parts with their ``drifts``."""
    count = len(names)
    scalars = {name: getattr(scores, name).tolist() for name in SCALAR_FIELDS}
    decided = decisions if decisions is not None else [{} for _ in names]
    size = preprocessing.size
    geometries: Sequence[Framing | TileLayout] = layouts or [
        Framing(w, h, size) for w, h in (frames or [(size, size)] * count)
    ]
    kept = pictures if pictures is not None else [None] * count
    tiles = decisive if decisive is not None else [None] * count
    monitored = drifts if drifts is not None else [None] * count
    results = []
    for i, (name, framing, picture) in enumerate(zip(names, geometries, kept, strict=True)):
        patch_map = scores.patch_residual_map[i]
        results.append(
            Result(
                image=name,
                **{field: values[i] for field, values in scalars.items()},
                patch_residual_map=patch_map,
                framing=framing,
                picture=picture,
                **decided[i],
                region_threshold=None if rule is None else rule.threshold,
                regions=None if rule is None else tuple(framing.regions(rule, patch_map)),
                decisive_tile=None if tiles[i] is None else int(tiles[i]),
                drift=monitored[i],
            )
        )
    return results
