"""Pixel-level anomaly detection metrics (numpy only), on patch maps carried into each test
image's own frame (``regions.frame_map``, at the image's resolution): pixel AUROC, AUPRO up to a
false-positive rate, and the region recall and good-part region-flag rate at a region threshold;
and ``pair_auroc``, the one exact AUROC of two sets of values.

Pixels that a frame map leaves NaN (the band the preprocessing's centre crop cut off: not
inspected) are left out of every pixel metric, masks included. ``inctrl evaluate`` and
``inctrl-bench --eval`` both measure with these, so the torch side and the bench cannot differ.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inctrl_runtime.datasets import NORMAL
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import load_image
from inctrl_runtime.regions import Framing, RegionRule, above, label_components
from inctrl_runtime.tiling import TileLayout, Tiling

# AUPRO integrates the per-region overlap up to this false-positive rate (MVTec AD's protocol).
AUPRO_LIMIT = 0.3
# Values searched at a time: what the metrics hold beyond their inputs stays tens of MB.
SEARCH_CHUNK = 1 << 20


def _chunks(values: np.ndarray) -> Iterator[np.ndarray]:
    """``values`` in consecutive slices of ``SEARCH_CHUNK``."""
    return (values[start : start + SEARCH_CHUNK] for start in range(0, values.size, SEARCH_CHUNK))


def pair_auroc(normal: np.ndarray, anomalous: np.ndarray) -> float:
    """AUROC as the Mann-Whitney statistic: the share of (anomalous, normal) pairs in which the
    anomalous value is the higher, ties counted half (scikit-learn's ``roc_auc_score``).

    Args:
        normal: n values, ascending.
        anomalous: m values, any order; n, m >= 1.
    """
    # Normals below a value plus normals at or below it: twice the pairs it wins, ties half.
    # Integers, exact on any number of pixels; a chunk at a time, so memory stays small.
    pairs = sum(
        int(np.searchsorted(normal, part, side="left").sum())
        + int(np.searchsorted(normal, part, side="right").sum())
        for part in _chunks(anomalous)
    )
    return pairs / (2 * normal.size * anomalous.size)


@dataclass(frozen=True)
class PixelTruth:
    """What one test image's pixels are known to be: its frame (how the model's view lies in it)
    and its ground-truth mask file, 255 on a defect and 0 elsewhere at the image's resolution
    (None: a good part, every pixel defect-free)."""

    image: str
    framing: Framing | TileLayout
    mask: str | None

    @classmethod
    def of(
        cls,
        image: str | os.PathLike,
        mask: str | os.PathLike | None,
        size: int,
        tiling: Tiling | None = None,
    ) -> PixelTruth:
        """The truth of ``image`` for a model that sees S = ``size`` pixels square (with
        ``tiling``, tile by tile)."""
        width, height = load_image(image, size).size
        framing = (
            Framing(width, height, size)
            if tiling is None
            else tiling.layout(width, height, size, str(image))
        )
        return cls(str(image), framing, None if mask is None else str(mask))

    def mask_pixels(self) -> np.ndarray | None:
        """The mask at the frame's resolution, H x W bool (> 127 is a defect); None for a good
        part. A mask of another size than its image is refused in one line."""
        if self.mask is None:
            return None
        framing = self.framing
        mask = load_image(self.mask, framing.size).convert("L")
        if mask.size != (framing.width, framing.height):
            raise InputError(
                f"{self.mask}: mask is {mask.width}x{mask.height}, but its image {self.image} is "
                f"{framing.width}x{framing.height}; masks must have their image's size"
            )
        return np.asarray(mask) > 127


@dataclass(frozen=True)
class PixelValues:
    """A set of test images' frame maps against their ground truth, reduced to what the pixel
    metrics need: the map values of the inspected defect-free pixels (every pixel of a good part,
    the pixels outside the masks of the others) and of the inspected defect pixels; the ground
    -truth regions (8-connected components of a mask's inspected pixels, over all images) with
    the map's peak over each; the map's peak over each good part."""

    # In the maps' dtype (float32 for frame maps):
    normal: np.ndarray  # ascending
    defect: np.ndarray  # ascending
    defect_weight: np.ndarray  # float64, defect's order: 1 / the pixel count of its region
    region_peaks: np.ndarray  # one per region
    good_peaks: np.ndarray  # one per good part

    @classmethod
    def of(cls, maps: Iterable[np.ndarray], masks: Iterable[np.ndarray | None]) -> PixelValues:
        """Frame maps (H x W float, NaN: not inspected) against their masks (the same H x W,
        bool; None: a good part), one image at a time, so that a generator of maps holds one
        frame at a time. The defect-free values are kept (4 bytes a pixel for frame maps), twice
        over for a moment while they are joined."""
        normal, defect, weight, region_peaks, good_peaks = [], [], [], [], []
        for values, mask in zip(maps, masks, strict=True):
            inspected = ~np.isnan(values)
            if mask is None:
                seen = values[inspected]
                normal.append(seen)
                good_peaks.append(seen.max(initial=-np.inf))
                continue
            if mask.shape != values.shape:
                raise ValueError(f"a mask of shape {mask.shape} for a map of shape {values.shape}")
            labels, count = label_components(mask & inspected)
            normal.append(values[inspected & ~mask])
            inside = labels > 0
            region = labels[inside] - 1
            region_values = values[inside]
            peaks = np.full(count, -np.inf, dtype=values.dtype)
            np.maximum.at(peaks, region, region_values)
            defect.append(region_values)
            weight.append(1.0 / np.bincount(region, minlength=count)[region])
            region_peaks.append(peaks)
        none = np.zeros(0, dtype=np.float32)
        normal_values = np.concatenate(normal or [none])
        normal.clear()  # the per-image pieces go before the sort
        normal_values.sort()
        defect_values = np.concatenate(defect or [none])
        order = np.argsort(defect_values, kind="stable")
        return cls(
            normal_values,
            defect_values[order],
            np.concatenate(weight or [none.astype(np.float64)])[order],
            np.concatenate(region_peaks or [none]),
            np.asarray(good_peaks, dtype=normal_values.dtype),
        )

    @property
    def regions(self) -> int:
        return self.region_peaks.size

    def auroc(self) -> float | None:
        """Pixel AUROC (exact, over every inspected pixel); None without both kinds of pixels."""
        if not self.normal.size or not self.defect.size:
            return None
        return pair_auroc(self.normal, self.defect)

    def aupro(self, limit: float = AUPRO_LIMIT) -> float | None:
        """The area under the per-region overlap (PRO) against the false-positive rate (FPR) up
        to ``limit``, divided by ``limit`` (MVTec AD's AUPRO); None without regions or
        defect-free pixels.

        At a threshold t, FPR is the share of defect-free pixels at or above t and PRO the mean
        over regions of the share of their pixels at or above t. t runs down every distinct value;
        pixels of equal value enter together, so the curve has one vertex per distinct value,
        joined by straight lines (trapezoids), and is cut at FPR = ``limit`` by interpolation.
        """
        if not 0 < limit <= 1:
            raise ValueError(f"an FPR limit must lie in (0, 1], got {limit}")
        if not self.regions or not self.normal.size:
            return None
        count = self.normal.size
        # PRO above a value, or at or above it: suffix sums of the defect pixels' region weights.
        beyond = np.r_[np.cumsum(self.defect_weight[::-1])[::-1], 0.0] / self.regions

        def pro(values: np.ndarray, side: str) -> np.ndarray:
            return beyond[np.searchsorted(self.defect, values, side=side)]

        # The normal value v whose pixels take the FPR across the limit: the m-th highest, m the
        # fewest with m / count >= limit (as floats compare).
        m = math.ceil(limit * count)
        while (m - 1) / count >= limit:
            m -= 1
        while m / count < limit:
            m += 1
        value = self.normal[count - m]  # a numpy scalar: compared in the values' dtype
        higher = count - int(np.searchsorted(self.normal, value, side="right"))
        tied = count - higher - int(np.searchsorted(self.normal, value, side="left"))
        # Each normal pixel above v adds 1 / count to the FPR while PRO goes from its value's
        # "above" to its "at or above" (a tied group's trapezoid, shared by its pixels).
        higher_values = self.normal[count - higher :]
        area = sum(
            float(np.sum(pro(part, "right") + pro(part, "left"))) for part in _chunks(higher_values)
        )
        area /= 2 * count
        # v's pixels take the FPR from higher / count to past the limit: the trapezoid cut there.
        width = limit - higher / count
        low, high = float(pro(value, "right")), float(pro(value, "left"))
        at_limit = low + (high - low) * width / (tied / count)
        area += width * (low + at_limit) / 2
        return area / limit

    def region_recall(self, cut: float) -> float | None:
        """The share of ground-truth regions with at least one pixel above ``cut``; None
        without regions."""
        return float(above(self.region_peaks, cut).mean()) if self.regions else None

    def region_flag_rate(self, cut: float) -> float | None:
        """The share of good parts with at least one pixel above ``cut`` (a region where there is
        no defect); None without good parts."""
        return float(above(self.good_peaks, cut).mean()) if self.good_peaks.size else None


class PixelLabels(NamedTuple):
    """The test images whose pixels are known, by their rows among all test images: the normal
    ones (every pixel defect-free) and the anomalous ones with a mask, each with its truth."""

    rows: list[int]
    truths: list[PixelTruth]

    @classmethod
    def of(
        cls,
        images: Sequence[str],
        targets: Sequence[int],
        masks: Sequence[str | None],
        size: int,
        tiling: Tiling | None = None,
    ) -> PixelLabels | None:
        """From the test images, their targets (0: normal) and mask files (None: none), for a
        model that sees S = ``size`` pixels square (with ``tiling``, tile by tile); None when
        no anomalous image has a mask."""
        known = [
            row
            for row, (target, mask) in enumerate(zip(targets, masks, strict=True))
            if target == NORMAL or mask is not None
        ]
        if all(targets[row] == NORMAL for row in known):
            return None
        truths = [
            PixelTruth.of(images[row], None if targets[row] == NORMAL else masks[row], size, tiling)
            for row in known
        ]
        return cls(known, truths)

    def values(self, patch_maps: np.ndarray) -> PixelValues:
        """``PixelValues`` of the test images' patch maps (all n test images, n x P, each
        row-major over the square patch grid; tiled, n x T * P): each known one's map carried
        into its frame (``frame_map``, or stitched) and its mask read, one image at a time."""
        maps = np.asarray(patch_maps, dtype=np.float32)[self.rows]
        pairs = list(zip(maps, self.truths, strict=True))
        return PixelValues.of(
            (truth.framing.map(patch_map) for patch_map, truth in pairs),
            (truth.mask_pixels() for _, truth in pairs),
        )


class RegionPoint(NamedTuple):
    """Regions at a target false-positive rate: the region threshold the calibration images' map
    maxima give (``RegionRule``; None: too few images for the rate), and at it the region recall
    and the good parts' region-flag rate (None: no threshold, or no ground truth)."""

    target_fpr: float
    region_threshold: float | None
    region_recall: float | None
    region_flag_rate: float | None


def region_point(map_maxima: np.ndarray, pixels: PixelValues | None, alpha: float) -> RegionPoint:
    """The ``RegionPoint`` at rate ``alpha`` of a calibration's map maxima (n, ascending: each
    calibration image's ``max_patch_residual``) on test images' ``pixels`` (None: no masks)."""
    rule = RegionRule.at(np.asarray(map_maxima, dtype=np.float32), alpha)
    if rule is None:
        return RegionPoint(alpha, None, None, None)
    if pixels is None:
        return RegionPoint(alpha, rule.threshold, None, None)
    cut = rule.threshold
    return RegionPoint(alpha, cut, pixels.region_recall(cut), pixels.region_flag_rate(cut))
