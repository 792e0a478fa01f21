"""Where a defect is: the patch residual map in the user's image, and its calibrated regions
(numpy only; docs/regions.md states the rules and the guarantee).

The model sees a frame through its preprocessing: the shorter side resized to S, then the
centred S x S crop (``preprocess``). ``Framing`` is that geometry for one frame, and
``frame_map`` carries the G x G patch map back through it: every pixel of the frame (or of a
smaller picture of the whole frame) whose centre falls inside the crop gets the bilinear
interpolation of the grid at its centre (``align_corners=False``, as torch's ``interpolate``
upsamples a map over the view), and the pixel that holds a patch's centre at least that patch's
value (the bilinear map's value there, which no pixel centre meets exactly); the pixels of the
band the crop cut off are NaN, not inspected. Bilinear interpolation is a weighted mean of grid
values, so the map in the frame never exceeds the grid's maximum (``max_patch_residual``), and it
reaches it: a frame has a pixel above a threshold exactly when its grid does.

A region is a connected component (8-connected) of the frame's pixels whose map lies above the
region threshold. The threshold is the split-conformal order statistic of the calibration
images' map maxima (``decisions.threshold``), so at most alpha of good parts get any region.
Components are labelled from the runs of flagged pixels in each row (cheap: the work grows with
the runs, not the pixels), with no library beyond numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inctrl_runtime.decisions import Calibration, p_values, threshold
from inctrl_runtime.preprocess import center_crop_box, resized_size

# The value of a not-inspected pixel in a mask PNG: a region is 255, an inspected pixel outside
# every region 0. Below 128, so a mask read as "value >= 128 is a region" stays right.
NOT_INSPECTED = 127
REGION = 255


@dataclass(frozen=True)
class Framing:
    """How a frame of ``width`` x ``height`` pixels becomes the model's S x S view (resize the
    shorter side to S, centre crop), and how the view's G x G patch grid lies in the frame."""

    width: int
    height: int
    size: int  # S

    @property
    def resized(self) -> tuple[int, int]:
        """The frame's width and height once its shorter side is S."""
        return resized_size(self.width, self.height, self.size)

    def inspected_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), ends exclusive: the frame pixels whose centre falls inside the
        crop, i.e. the pixels the model sees. Exact integer arithmetic: pixel x is inspected
        when ``left <= (x + 1/2) * resized_width / width < left + S``."""
        new_width, new_height = self.resized
        left, top, right, bottom = center_crop_box(new_width, new_height, self.size)

        def first_at_or_after(edge: int, scaled: int, full: int) -> int:
            # the least x with (2x + 1) * scaled >= 2 * edge * full
            return -((scaled - 2 * edge * full) // (2 * scaled))

        return (
            first_at_or_after(left, new_width, self.width),
            first_at_or_after(top, new_height, self.height),
            first_at_or_after(right, new_width, self.width),
            first_at_or_after(bottom, new_height, self.height),
        )

    @property
    def inspected_fraction(self) -> float:
        """The share of the frame's pixels the model sees (1.0 for a square frame)."""
        x0, y0, x1, y1 = self.inspected_box()
        return (x1 - x0) * (y1 - y0) / (self.width * self.height)

    def grid_weights(self, axis: int, samples: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
        """For ``samples`` pixels spread evenly over the frame along ``axis`` (0: x, 1: y):
        their bilinear weights on the grid's columns (rows), ``samples`` x G, and whether each
        is inspected."""
        full = (self.width, self.height)[axis]
        scaled = self.resized[axis]
        start = center_crop_box(*self.resized, self.size)[axis]
        centres = (np.arange(samples, dtype=np.float64) + 0.5) * (full / samples)
        in_view = centres * (scaled / full) - start  # view pixels
        inspected = (in_view >= 0) & (in_view < self.size)
        position = np.clip(in_view * (grid / self.size) - 0.5, 0, grid - 1)
        low = np.minimum(np.floor(position).astype(np.int64), grid - 2 if grid > 1 else 0)
        high = np.minimum(low + 1, grid - 1)
        fraction = position - low
        weights = np.zeros((samples, grid), dtype=np.float32)
        rows = np.arange(samples)
        weights[rows, low] = 1 - fraction
        weights[rows, high] += fraction  # the same cell as ``low`` at the clamped edges
        return weights, inspected

    def map(self, patch_map: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """``frame_map`` of a query's patch map in this frame (a tiled frame's
        ``tiling.TileLayout`` answers the same)."""
        return frame_map(patch_map, self, shape)

    def regions(self, rule: RegionRule, patch_map: np.ndarray) -> list[Region]:
        """A query's regions in this frame under ``rule`` (``RegionRule.regions``)."""
        return rule.regions(patch_map, self)

    def knots(self, axis: int, samples: int, grid: int) -> np.ndarray:
        """For ``samples`` pixels spread evenly over the frame along ``axis``: the pixel that
        holds each grid column's (row's) centre, G indices."""
        full = (self.width, self.height)[axis]
        scaled = self.resized[axis]
        start = center_crop_box(*self.resized, self.size)[axis]
        centres = (np.arange(grid) + 0.5) * (self.size / grid)  # view pixels
        in_frame = (centres + start) * (full / scaled) * (samples / full)
        return np.minimum(np.floor(in_frame).astype(np.int64), samples - 1)


def _cells(patch_map: np.ndarray) -> np.ndarray:
    """A patch map (P values, row-major over a square grid) as its G x G float32 grid."""
    values = np.asarray(patch_map, dtype=np.float32).reshape(-1)
    grid = int(round(len(values) ** 0.5))
    if grid * grid != len(values):
        raise ValueError(f"a patch map of {len(values)} values is not a square grid")
    return values.reshape(grid, grid)


def frame_map(
    patch_map: np.ndarray, framing: Framing, shape: tuple[int, int] | None = None
) -> np.ndarray:
    """The patch residual map (P values, row-major over a square grid) in the frame: a float32
    ``shape`` (height, width; default the frame's own) picture of the whole frame, bilinear
    inside the crop and NaN over the band the crop cut off (not inspected)."""
    cells = _cells(patch_map)
    height, width = shape if shape is not None else (framing.height, framing.width)
    upsampled, inspected_y, inspected_x = _sampled(cells, framing, height, width)
    upsampled[~inspected_y, :] = np.nan
    upsampled[:, ~inspected_x] = np.nan
    return upsampled


def _sampled(
    cells: np.ndarray,
    framing: Framing,
    height: int,
    width: int,
    rows: slice = slice(None),
    columns: slice = slice(None),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The grid sampled at ``rows`` x ``columns`` of a height x width picture of the frame
    (bilinear, and the knots), with whether each of those rows and columns is inspected."""
    grid = len(cells)
    across, inspected_x = framing.grid_weights(0, width, grid)
    down, inspected_y = framing.grid_weights(1, height, grid)
    upsampled = (down[rows] @ cells) @ across[columns].T
    # The pixel holding a patch's centre takes at least the patch's value (the bilinear map's
    # value at that point): the frame's maximum is then the grid's.
    knot_y, knot_x = framing.knots(1, height, grid), framing.knots(0, width, grid)
    y_start, y_stop, _ = rows.indices(height)
    x_start, x_stop, _ = columns.indices(width)
    in_y = (knot_y >= y_start) & (knot_y < y_stop)
    in_x = (knot_x >= x_start) & (knot_x < x_stop)
    place = ((knot_y[in_y] - y_start)[:, None], (knot_x[in_x] - x_start)[None, :])
    np.maximum.at(upsampled, place, cells[np.ix_(in_y, in_x)])
    return upsampled, inspected_y[rows], inspected_x[columns]


@dataclass(frozen=True)
class Runs:
    """The runs of True pixels of a 2-D mask, row by row: each run's row, first column and end
    column (exclusive), in row-major order."""

    row: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> Runs:
        padded = np.zeros((mask.shape[0], mask.shape[1] + 2), dtype=np.int8)
        padded[:, 1:-1] = mask
        steps = np.diff(padded, axis=1)
        rows, starts = np.nonzero(steps == 1)
        _, ends = np.nonzero(steps == -1)  # same rows, same order
        return cls(rows, starts, ends)

    def __len__(self) -> int:
        return len(self.row)

    def touching_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Pairs (a, b) of runs in consecutive rows (b one row under a) that touch, corners
        included (8-connectivity): b starts at most at a's end and ends at least at a's start."""
        if len(self) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        columns = int(self.end.max()) + 2
        # Runs are in row-major order, so a key of (row, column) sorts them; a run below, b,
        # touches the runs above whose end >= b.start and whose start <= b.end.
        end_keys = self.row * columns + self.end
        start_keys = self.row * columns + self.start
        first = np.searchsorted(end_keys, (self.row - 1) * columns + self.start, side="left")
        last = np.searchsorted(start_keys, (self.row - 1) * columns + self.end, side="right")
        count = np.maximum(last - first, 0)
        below = np.repeat(np.arange(len(self)), count)
        offsets = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
        above = np.repeat(first, count) + offsets
        keep = self.row[above] == self.row[below] - 1
        return above[keep], below[keep]

    def components(self) -> tuple[np.ndarray, int]:
        """Each run's component (0 .. count - 1, numbered in row-major order of their first
        run), and the count."""
        if len(self) == 0:
            return np.zeros(0, np.int64), 0
        above, below = self.touching_pairs()
        label = np.arange(len(self))
        while True:  # the least run index of each component, by propagation and jumping
            joined = np.minimum(label[above], label[below])
            before = label.copy()
            np.minimum.at(label, above, joined)
            np.minimum.at(label, below, joined)
            label = label[label]
            if np.array_equal(label, before):
                break
        roots, numbered = np.unique(label, return_inverse=True)
        return numbered, len(roots)


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The 8-connected components of a 2-D bool mask: an int32 label image (0 outside, 1 ..
    count inside, numbered in row-major order of their first pixel) and the count."""
    runs = Runs.of(np.asarray(mask, dtype=bool))
    component, count = runs.components()
    labels = np.zeros(mask.shape, dtype=np.int32)
    for row, start, end, index in zip(runs.row, runs.start, runs.end, component, strict=True):
        labels[row, start:end] = index + 1
    return labels, count


@dataclass(frozen=True)
class Region:
    """One region in the frame: its box (x0, y0, x1, y1; ends exclusive), area in pixels and as
    a share of the inspected pixels, the peak and mean of the map over it, and the peak's
    p-value against the calibration images' map maxima."""

    box: tuple[int, int, int, int]
    area: int
    area_fraction: float
    peak_residual: float
    mean_residual: float
    p_value: float

    def record(self) -> dict:
        """The region as the JSON records carry it."""
        return {
            "box": list(self.box),
            "area": self.area,
            "area_fraction": self.area_fraction,
            "peak_residual": self.peak_residual,
            "mean_residual": self.mean_residual,
            "p_value": self.p_value,
        }


@dataclass(frozen=True)
class RegionRule:
    """A calibrated category's region threshold at a rate: the sorted map maxima of its n
    calibration images and the threshold they give at ``alpha``."""

    maxima: np.ndarray  # n, ascending
    alpha: float
    threshold: float

    @classmethod
    def at(cls, maxima: np.ndarray, alpha: float) -> RegionRule | None:
        """The rule at rate ``alpha``; None when n is too small for it."""
        cut = threshold(maxima, alpha)
        return None if cut is None else cls(maxima, alpha, cut)

    def regions(self, patch_map: np.ndarray, framing: Framing) -> list[Region]:
        """The regions of one query in its frame, largest peak first. The map is made only
        where a pixel can lie above the threshold: near a patch above it (a pixel's value
        mixes the four patches around it). A part whose grid is not above it costs nothing."""
        cells = _cells(patch_map)
        hot = cells > self.threshold
        if not hot.any():
            return []
        left, top, right, bottom = framing.inspected_box()
        grid = len(cells)
        window = []
        for axis, (start, stop) in ((1, (top, bottom)), (0, (left, right))):
            touched = np.flatnonzero(hot.any(axis=axis))  # rows (axis 1) or columns (axis 0)
            low, high = max(touched[0] - 1, 0), min(touched[-1] + 1, grid - 1)
            weights, _ = framing.grid_weights(axis, (framing.width, framing.height)[axis], grid)
            near = np.flatnonzero(weights[start:stop, low : high + 1].any(axis=1)) + start
            window.append(slice(int(near[0]), int(near[-1]) + 1))
        rows, columns = window
        values, _, _ = _sampled(cells, framing, framing.height, framing.width, rows, columns)
        return self._components(values, columns.start, rows.start, framing)

    def regions_of(self, values: np.ndarray, framing: Framing) -> list[Region]:
        """The regions of a frame map (``frame_map`` at the frame's size)."""
        left, top, right, bottom = framing.inspected_box()
        return self._components(values[top:bottom, left:right], left, top, framing)

    def _components(
        self, inside: np.ndarray, left: int, top: int, framing: Framing
    ) -> list[Region]:
        """The regions of ``inside``, a part of the frame's map with no pixel outside the crop
        whose top-left pixel is (``left``, ``top``) in the frame."""
        inside = np.ascontiguousarray(inside)
        runs = Runs.of(inside > self.threshold)
        component, count = runs.components()
        if count == 0:
            return []
        columns = inside.shape[1]
        flat = np.append(inside.ravel(), np.float32(0))  # reduceat needs an index past the end
        bounds = np.stack([runs.row * columns + runs.start, runs.row * columns + runs.end], 1)
        run_sums = np.add.reduceat(flat, bounds.ravel(), dtype=np.float64)[::2]
        run_peaks = np.maximum.reduceat(flat, bounds.ravel())[::2]
        area = np.bincount(component, runs.end - runs.start, count)
        total = np.bincount(component, run_sums, count)
        peak = np.full(count, -np.inf)
        np.maximum.at(peak, component, run_peaks)
        x0, y0 = np.full(count, columns), np.full(count, inside.shape[0])
        x1, y1 = np.zeros(count, np.int64), np.zeros(count, np.int64)
        np.minimum.at(x0, component, runs.start)
        np.maximum.at(x1, component, runs.end)
        np.minimum.at(y0, component, runs.row)
        np.maximum.at(y1, component, runs.row + 1)
        x0_, y0_, x1_, y1_ = framing.inspected_box()
        inspected = (x1_ - x0_) * (y1_ - y0_)
        peaks_p = p_values(self.maxima, peak)
        found = [
            Region(
                box=(int(x0[i] + left), int(y0[i] + top), int(x1[i] + left), int(y1[i] + top)),
                area=int(area[i]),
                area_fraction=float(area[i] / inspected),
                peak_residual=float(peak[i]),
                mean_residual=float(total[i] / area[i]),
                p_value=float(peaks_p[i]),
            )
            for i in range(count)
        ]
        return sorted(found, key=lambda region: -region.peak_residual)


def region_rule(calibration: Calibration, alpha: float) -> RegionRule | None:
    """A calibration's region rule at rate ``alpha``: None when it keeps no map maxima (made
    before regions were) or is too small for the rate (``Calibration.misfits`` says which)."""
    if calibration.map_maxima is None:
        return None
    return RegionRule.at(calibration.map_maxima, alpha)


def above(values: np.ndarray, cut: float) -> np.ndarray:
    """Which pixels of a frame map lie above ``cut`` (a not-inspected one never does)."""
    with np.errstate(invalid="ignore"):
        return values > cut


def region_mask(values: np.ndarray, region_threshold: float | None) -> np.ndarray:
    """The 8-bit mask of a frame map: ``REGION`` in a region (above ``region_threshold``), 0
    elsewhere inside the crop, ``NOT_INSPECTED`` over the band the crop cut off. Without a
    threshold, no pixel is a region."""
    mask = np.where(np.isnan(values), NOT_INSPECTED, 0).astype(np.uint8)
    if region_threshold is not None:
        mask[above(values, region_threshold)] = REGION
    return mask
