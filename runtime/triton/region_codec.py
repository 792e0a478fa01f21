"""The region fields of a served answer: the one codec of their wire form.

A record says where a query's defect is with ``frame_size``, ``inspected_fraction``,
``region_threshold`` and ``regions`` (``results.score_record``). Triton's tensors cannot hold
None nor a list of dicts of varying length, so a served answer carries them as:

- ``frame_size``: INT32, 2 per query (width, height), made by the preprocess model;
- ``inspected_fraction``: FP32, one per query;
- ``region_threshold``: FP32, one per query, NaN where there are no regions (as the decision
  fields' codec says None: ``decisions.decision_arrays``);
- ``regions``: STRING (BYTES), one per query: the utf-8 JSON of the list of ``Region.record()``
  dicts, or ``null`` where there are no regions.

JSON text rather than fixed-size arrays: a query has any number of regions, and the client
gets each region's record exactly as the runtime writes it. ``region_arrays`` (the head) and
``decoded_regions`` (the client) are the only places that write or read this form.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import numpy as np

from inctrl_runtime.regions import Framing, RegionRule
from inctrl_runtime.triton.names import FRAME_SIZE, INSPECTED_FRACTION, REGION_THRESHOLD, REGIONS


def frame_sizes(frames: Sequence[tuple[int, int]]) -> np.ndarray:
    """B frames' (width, height) as the ``frame_size`` tensor: B x 2 int32."""
    return np.array(frames, dtype=np.int32).reshape(-1, 2)


def region_arrays(
    rule: RegionRule | None, patch_maps: np.ndarray, frames: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """``inspected_fraction``, ``region_threshold`` and ``regions`` for B queries: their patch
    maps (B x P) in their frames (``frame_size``, B x 2) as a model of input size ``size`` saw
    them, under ``rule`` (None: no regions, so NaN and ``null``)."""
    framings = [Framing(int(width), int(height), size) for width, height in frames]
    found = [
        None if rule is None else [region.record() for region in rule.regions(patch_map, framing)]
        for patch_map, framing in zip(patch_maps, framings, strict=True)
    ]
    cut = math.nan if rule is None else rule.threshold
    return {
        INSPECTED_FRACTION: np.array([f.inspected_fraction for f in framings], np.float32),
        REGION_THRESHOLD: np.full(len(framings), cut, np.float32),
        REGIONS: np.array([json.dumps(regions).encode() for regions in found], dtype=np.object_),
    }


def decoded_regions(arrays: Mapping[str, np.ndarray], row: int) -> dict:
    """One query's region fields as a record holds them, from a served answer's arrays (those
    of ``frame_sizes`` and ``region_arrays``): None where they say NaN or ``null``."""
    threshold = float(np.ravel(arrays[REGION_THRESHOLD])[row])
    return {
        FRAME_SIZE: np.reshape(arrays[FRAME_SIZE], (-1, 2))[row].tolist(),
        INSPECTED_FRACTION: float(np.ravel(arrays[INSPECTED_FRACTION])[row]),
        REGION_THRESHOLD: None if math.isnan(threshold) else threshold,
        REGIONS: json.loads(bytes(np.ravel(arrays[REGIONS])[row])),
    }
