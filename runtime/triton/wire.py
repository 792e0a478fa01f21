"""A served answer's wire form: the one codec of the fields Triton's tensors cannot carry as a
record holds them.

A record (``results.score_record``) says where a query's defect is with ``frame_size``,
``inspected_fraction``, ``region_threshold`` and ``regions``, and how a tiled frame was cut with
``tiling`` and ``decisive_tile``. Triton's tensors cannot hold None nor lists of dicts of varying
length, so a served answer carries them, a row per image, as:

- ``frame_size``: INT32, 2 per image (width, height);
- ``inspected_fraction``: FP32, one per image;
- ``region_threshold``: FP32, one per image, NaN where there are no regions (as the decision
  fields' codec says None: ``decisions.decision_arrays``);
- ``regions``: STRING (BYTES), one per image: the utf-8 JSON of the list of ``Region.record()``
  dicts, or ``null`` where there are no regions;
- ``tiling``: STRING, one per image: the utf-8 JSON of ``TileLayout.record()``, or ``null`` for a
  frame scored whole;
- ``decisive_tile``: INT32, one per image, -1 for a frame scored whole.

JSON text rather than fixed-size arrays: an image has any number of regions, and the client gets
each record exactly as the runtime writes it. ``where_arrays`` (the entry model) and
``record_of`` (the client) are the only places that write or read this form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from inctrl_runtime.decisions import decoded_decision
from inctrl_runtime.regions import Framing, RegionRule
from inctrl_runtime.results import SCALAR_FIELDS, score_record
from inctrl_runtime.tiling import TileLayout
from inctrl_runtime.triton.names import (
    DECISIVE_TILE,
    FRAME_SIZE,
    INSPECTED_FRACTION,
    OUTPUTS,
    REGION_THRESHOLD,
    REGIONS,
    TILING,
)

NO_TILE = -1  # the decisive_tile of a frame scored whole


def json_bytes(value: object) -> bytes:
    """A STRING tensor's item: ``value`` as utf-8 JSON text (None: ``null``)."""
    return json.dumps(value).encode()


def where_arrays(
    rule: RegionRule | None,
    patch_maps: Sequence[np.ndarray],
    framings: Sequence[Framing | TileLayout],
    decisive: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """The region and tile fields of B images: their patch maps (P values each; a tiled frame's
    T * P) in their frames as the model saw them (``framings``: a frame's ``Framing``, or a
    tiled frame's ``TileLayout``), under ``rule`` (None: no regions, so NaN and ``null``), with
    the tiled frames' ``decisive`` tiles (None: every frame scored whole)."""
    found = [
        None if rule is None else [region.record() for region in framing.regions(rule, patch_map)]
        for patch_map, framing in zip(patch_maps, framings, strict=True)
    ]
    cut = math.nan if rule is None else rule.threshold
    tiles = [NO_TILE] * len(framings) if decisive is None else [int(t) for t in decisive]
    layouts = [f.record() if isinstance(f, TileLayout) else None for f in framings]
    return {
        FRAME_SIZE: np.array([(f.width, f.height) for f in framings], np.int32).reshape(-1, 2),
        INSPECTED_FRACTION: np.array([f.inspected_fraction for f in framings], np.float32),
        REGION_THRESHOLD: np.full(len(framings), cut, np.float32),
        REGIONS: np.array([json_bytes(regions) for regions in found], dtype=np.object_),
        TILING: np.array([json_bytes(layout) for layout in layouts], dtype=np.object_),
        DECISIVE_TILE: np.array(tiles, np.int32),
    }


def decoded_where(arrays: Mapping[str, np.ndarray], row: int) -> dict:
    """One image's region and tile fields as a record holds them, from ``where_arrays`` (or a
    served answer's arrays of the same names): None where they say NaN, ``null`` or -1."""
    threshold = float(np.ravel(arrays[REGION_THRESHOLD])[row])
    tile = int(np.ravel(arrays[DECISIVE_TILE])[row])
    return {
        FRAME_SIZE: np.reshape(arrays[FRAME_SIZE], (-1, 2))[row].tolist(),
        INSPECTED_FRACTION: float(np.ravel(arrays[INSPECTED_FRACTION])[row]),
        REGION_THRESHOLD: None if math.isnan(threshold) else threshold,
        REGIONS: json.loads(bytes(np.ravel(arrays[REGIONS])[row])),
        TILING: json.loads(bytes(np.ravel(arrays[TILING])[row])),
        DECISIVE_TILE: None if tile == NO_TILE else tile,
    }


def record_of(image: str, output: Callable[[str], np.ndarray]) -> dict:
    """The record ``Result.record()`` makes, from the entry point's outputs for one image
    (``output(name)``), the decisions and the where-fields read by their codecs
    (``decisions.decoded_decision``: a NaN p-value is an uncalibrated category, a NaN threshold
    a calibration too small for the rate asked; ``decoded_where``)."""
    arrays = {name: output(name) for name in OUTPUTS}
    values = {name: arrays[name].reshape(-1)[0] for name in SCALAR_FIELDS}
    values |= decoded_decision(arrays, 0) | decoded_where(arrays, 0)
    return score_record(image, {**values, "patch_residual_map": arrays["patch_residual_map"]})
