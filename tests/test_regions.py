"""Defect regions on hand-made maps: the patch map carried into the frame, the not-inspected
band, connected components, boxes and areas, the region threshold, records and file names."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from inctrl_runtime.decisions import Calibration
from inctrl_runtime.output import output_names
from inctrl_runtime.preprocess import Preprocessing, center_crop_box, resized_size
from inctrl_runtime.regions import (
    NOT_INSPECTED,
    REGION,
    Framing,
    RegionRule,
    frame_map,
    label_components,
    region_mask,
    region_rule,
)
from inctrl_runtime.results import Scores, to_results

SIZE, GRID, PATCH = 240, 15, 16
FRAMES = [(240, 240), (241, 241), (333, 201), (201, 333), (1001, 240), (97, 131), (2448, 2048)]


def hot(row: int, column: int, value: float = 1.0) -> np.ndarray:
    patch_map = np.zeros(GRID * GRID, dtype=np.float32)
    patch_map[row * GRID + column] = value
    return patch_map


def in_frame(view_x: float, width: int, height: int, axis: int) -> float:
    """A view coordinate (pixels of the S x S crop) as a frame coordinate, worked out from the
    preprocessing's resize and crop (``preprocess.resized_size`` and ``center_crop_box``)."""
    resized = resized_size(width, height, SIZE)
    start = center_crop_box(*resized, SIZE)[axis]
    return (view_x + start) * (width, height)[axis] / resized[axis]


# ------------------------------------------------------------------------------ mapping
@pytest.mark.unit
@pytest.mark.parametrize("width, height", FRAMES)
@pytest.mark.parametrize("row, column", [(7, 7), (0, 14), (14, 0), (3, 11)])
def test_a_hot_patch_lands_where_the_model_saw_it(width, height, row, column) -> None:
    values = frame_map(hot(row, column), Framing(width, height, SIZE))
    assert values.shape == (height, width) and values.dtype == np.float32
    # the patch's centre in the view, carried into the frame
    expected = [in_frame(PATCH * c + PATCH / 2, width, height, axis)
                for axis, c in ((0, column), (1, row))]  # fmt: skip
    x, y = (min(int(e), side - 1) for e, side in zip(expected, (width, height), strict=True))
    assert values[y, x] > 0.9 and np.nanmax(values) <= 1  # the peak is there, not smeared
    hottest = np.argwhere(values >= np.nanmax(values) - 0.05)  # (a corner patch is a plateau)
    scale = [(width, height)[axis] / resized_size(width, height, SIZE)[axis] for axis in (0, 1)]
    assert np.abs(hottest[:, 1] + 0.5 - expected[0]).min() <= scale[0] + 0.5
    assert np.abs(hottest[:, 0] + 0.5 - expected[1]).min() <= scale[1] + 0.5
    # nothing lights up beyond the neighbouring patches' centres (bilinear support)
    lit = np.argwhere(values > 0)
    for axis, cell, found in ((0, column, lit[:, 1]), (1, row, lit[:, 0])):
        low = in_frame(max(PATCH * (cell - 1) + PATCH / 2, 0), width, height, axis)
        high = in_frame(min(PATCH * (cell + 1) + PATCH / 2, SIZE), width, height, axis)
        assert found.min() + 0.5 >= low - 1 and found.max() + 0.5 <= high + 1


@pytest.mark.unit
@pytest.mark.parametrize("width, height", FRAMES)
def test_the_not_inspected_band_is_exactly_what_the_crop_cut_off(width, height) -> None:
    framing = Framing(width, height, SIZE)
    values = frame_map(np.full(GRID * GRID, 0.3, np.float32), framing)
    inspected = ~np.isnan(values)
    # a pixel is inspected when its centre falls inside the crop, worked out in floating point
    columns = np.array([0 <= in_frame(0, width, height, 0) <= x + 0.5 < in_frame(SIZE, width,
                        height, 0) for x in range(width)])  # fmt: skip
    rows = np.array([in_frame(0, width, height, 1) <= y + 0.5 < in_frame(SIZE, width, height, 1)
                     for y in range(height)])  # fmt: skip
    np.testing.assert_array_equal(inspected, rows[:, None] & columns[None, :])
    np.testing.assert_allclose(values[inspected], 0.3, atol=1e-6)  # a flat map stays flat
    x0, y0, x1, y1 = framing.inspected_box()
    assert inspected[y0:y1, x0:x1].all() and inspected.sum() == (x1 - x0) * (y1 - y0)
    assert framing.inspected_fraction == pytest.approx(inspected.mean())
    # the band is cut evenly from both ends of the longer side
    assert abs(x0 - (width - x1)) <= 1 and abs(y0 - (height - y1)) <= 1
    if width == height:
        assert framing.inspected_fraction == 1.0


@pytest.mark.unit
def test_the_map_in_the_view_is_torch_bilinear_and_reaches_the_grid_maximum() -> None:
    import torch
    import torch.nn.functional as F

    patch_map = np.random.default_rng(0).random(GRID * GRID).astype(np.float32)
    values = frame_map(patch_map, Framing(SIZE, SIZE, SIZE))
    grid = torch.from_numpy(patch_map).reshape(1, 1, GRID, GRID)
    expected = F.interpolate(grid, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    expected = expected[0, 0].numpy()
    # the pixel holding each patch's centre (view pixel 16 i + 8) takes the patch's value
    knots = np.zeros((SIZE, SIZE), bool)
    knots[PATCH // 2 :: PATCH, PATCH // 2 :: PATCH] = True
    np.testing.assert_allclose(values[~knots], expected[~knots], atol=1e-6)
    np.testing.assert_allclose(values[knots], np.maximum(expected[knots], patch_map), atol=1e-6)
    for width, height in FRAMES:
        framed = frame_map(patch_map, Framing(width, height, SIZE))
        assert np.nanmax(framed) == pytest.approx(patch_map.max(), abs=1e-6)
    small = frame_map(patch_map, Framing(2448, 2048, SIZE), shape=(256, 306))  # a heatmap's
    assert small.shape == (256, 306)
    assert np.isnan(small[:, 0]).all() and not np.isnan(small[:, 153]).any()


# --------------------------------------------------------------------------- components
@pytest.mark.unit
def test_components_on_a_hand_made_mask() -> None:
    mask = np.array(
        [
            [1, 1, 0, 0, 0, 1],
            [0, 1, 0, 0, 1, 0],  # corner contact joins (8-connectivity)
            [0, 0, 0, 0, 0, 0],
            [1, 0, 1, 1, 0, 0],
            [1, 0, 0, 1, 1, 1],
        ],
        dtype=bool,
    )
    labels, count = label_components(mask)
    assert count == 4
    np.testing.assert_array_equal(
        labels,
        [
            [1, 1, 0, 0, 0, 2],
            [0, 1, 0, 0, 2, 0],
            [0, 0, 0, 0, 0, 0],
            [3, 0, 4, 4, 0, 0],
            [3, 0, 0, 4, 4, 4],
        ],
    )
    assert label_components(np.zeros((3, 4), bool))[1] == 0


@pytest.mark.unit
def test_components_match_scipy_on_random_masks() -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        shape = tuple(rng.integers(1, 40, size=2))
        mask = rng.random(shape) < rng.random()
        labels, count = label_components(mask)
        expected, expected_count = ndimage.label(mask, structure=np.ones((3, 3)))
        assert count == expected_count
        np.testing.assert_array_equal(labels, expected)  # same numbering: row-major first pixel


@pytest.mark.unit
def test_regions_boxes_areas_peaks_and_p_values_on_a_hand_made_map() -> None:
    framing = Framing(300, 200, SIZE)  # landscape: 360 x 240 once resized, 50 columns cut
    assert framing.inspected_box() == (50, 0, 250, 200)  # off each side of the frame
    values = np.full((200, 300), 0.1, np.float32)
    values[:, :50] = values[:, 250:] = np.nan
    values[10:20, 60:65] = 0.5  # 50 pixels, peak 0.5
    values[15, 62] = 0.7
    values[100:102, 150:210] = 0.4  # 120 pixels
    values[199, 249] = 0.45  # one pixel in the last inspected corner
    maxima = np.linspace(0.0, 0.6, 100, dtype=np.float32)
    rule = RegionRule(maxima, 0.1, 0.3)
    regions = rule.regions_of(values, framing)
    boxes = [(60, 10, 65, 20), (249, 199, 250, 200), (150, 100, 210, 102)]  # peak order
    assert [r.box for r in regions] == boxes
    first, _, second = regions
    assert (first.area, second.area) == (50, 120)
    assert first.area_fraction == pytest.approx(50 / (200 * 200))
    assert (first.peak_residual, second.peak_residual) == pytest.approx((0.7, 0.4))
    assert first.mean_residual == pytest.approx((49 * 0.5 + 0.7) / 50)
    # the peak's p-value against the calibration maxima: (1 + #{maxima >= peak}) / (n + 1)
    assert first.p_value == pytest.approx(1 / 101)
    assert second.p_value == pytest.approx((1 + (maxima >= 0.4 - 1e-5).sum()) / 101)
    record = first.record()
    assert list(record) == ["box", "area", "area_fraction", "peak_residual", "mean_residual",
                            "p_value"]  # fmt: skip
    assert record["box"] == [60, 10, 65, 20]


@pytest.mark.unit
def test_no_region_when_the_grid_maximum_is_not_above_the_threshold() -> None:
    rule = RegionRule(np.linspace(0, 1, 50, dtype=np.float32), 0.1, 0.5)
    assert rule.regions(np.full(GRID * GRID, 0.5, np.float32), Framing(640, 480, SIZE)) == []
    found = rule.regions(hot(4, 9, 0.9), Framing(640, 480, SIZE))
    assert len(found) == 1 and found[0].peak_residual <= 0.9


@pytest.mark.unit
def test_the_region_threshold_is_the_conformal_order_statistic_of_the_maxima() -> None:
    maxima = np.arange(1, 101, dtype=np.float32) / 100  # n = 100
    calibration = Calibration.of(maxima[::-1], ["d"] * 100, "b", "fp32", "e", maxima[::-1])
    np.testing.assert_array_equal(calibration.map_maxima, maxima)  # kept sorted
    rule = region_rule(calibration, 0.05)
    rank = math.ceil(101 * 0.95)  # the 96th smallest
    assert rule.threshold == pytest.approx(maxima[rank - 1] + 1e-5)
    assert region_rule(calibration, 0.001) is None  # n = 100 cannot promise 0.001
    old = Calibration.of(maxima, ["d"] * 100, "b", "fp32", "e")  # made before regions
    assert region_rule(old, 0.05) is None
    assert any("calibrate again" in line for line in old.misfits("b", "fp32", 0.05, 0.05))
    assert old.misfits("b", "fp32", 0.05) == []  # no regions asked: nothing to say


@pytest.mark.unit
def test_masks_mark_regions_and_the_band() -> None:
    values = np.array([[np.nan, 0.2, 0.6, np.nan], [np.nan, 0.7, 0.1, np.nan]], np.float32)
    np.testing.assert_array_equal(
        region_mask(values, 0.5),
        [[NOT_INSPECTED, 0, REGION, NOT_INSPECTED], [NOT_INSPECTED, REGION, 0, NOT_INSPECTED]],
    )
    assert (region_mask(values, None) != REGION).all()


# ---------------------------------------------------------------------------- results
def _scores(maps: np.ndarray) -> Scores:
    count = len(maps)
    one = np.linspace(0.1, 0.9, count, dtype=np.float32)
    return Scores(one, one, one, one, maps.max(axis=1), maps)


@pytest.mark.unit
def test_records_carry_regions_or_null() -> None:
    maps = np.stack([hot(7, 7, 0.8), np.full(GRID * GRID, 0.05, np.float32)])
    rule = RegionRule(np.linspace(0, 0.5, 100, dtype=np.float32), 0.05, 0.45)
    preprocessing = Preprocessing()
    frames = [(480, 320), (240, 240)]
    decided = to_results(["a.png", "b.png"], _scores(maps), preprocessing, rule=rule,
                         frames=frames)  # fmt: skip
    first, second = (result.record() for result in decided)
    assert first["frame_size"] == [480, 320] and second["frame_size"] == [240, 240]
    assert first["inspected_fraction"] == pytest.approx(320 / 480, abs=2 / 480)
    assert first["region_threshold"] == pytest.approx(0.45)
    assert len(first["regions"]) == 1 and second["regions"] == []  # calibrated, none found
    x0, y0, x1, y1 = first["regions"][0]["box"]
    assert x0 < 240 < x1 and y0 < 160 < y1  # around the frame's centre
    assert decided[0].caption().endswith("1 region")
    uncalibrated = to_results(["a.png"], _scores(maps[:1]), preprocessing, frames=frames[:1])
    record = uncalibrated[0].record()
    assert record["regions"] is None and record["region_threshold"] is None
    mask = np.asarray(decided[0].mask())
    assert mask.shape == (320, 480) and set(np.unique(mask)) == {0, NOT_INSPECTED, REGION}
    assert (mask[:, :80] == NOT_INSPECTED).all() and (mask[:, 81:399] != NOT_INSPECTED).all()


@pytest.mark.unit
def test_picture_files_are_named_after_their_images() -> None:
    assert output_names(["data/a/scratch_000.png", "b.jpg"]) == ["scratch_000.png", "b.png"]
    mvtec = ["x/test/scratch/000.png", "x/test/good/000.png", "x/test/good/001.png"]
    assert output_names(mvtec) == ["scratch_000.png", "good_000.png", "good_001.png"]
    same = ["p/good/000.png", "q/good/000.png", "good_000.png"]
    assert output_names(same) == ["good_000.png", "good_000_2.png", "good_000_3.png"]
    assert output_names(["<PIL RGB 240x240>", "image of 812 bytes"]) == [
        "PIL_RGB_240x240.png",
        "image_of_812_bytes.png",
    ]


@pytest.mark.unit
def test_regions_made_near_hot_patches_are_those_of_the_whole_frame_map() -> None:
    """``RegionRule.regions`` maps only the part of the frame near patches above the threshold;
    its regions are those of the whole frame's map."""
    rng = np.random.default_rng(2)
    for width, height in FRAMES:
        framing = Framing(width, height, SIZE)
        for _ in range(20):
            patch_map = (rng.random(GRID * GRID) * 0.3).astype(np.float32)
            hot_cells = rng.integers(0, GRID * GRID, rng.integers(1, 4))
            patch_map[hot_cells] = 0.5 + rng.random(len(hot_cells)) * 0.3
            rule = RegionRule(np.sort(rng.random(100) * 0.5), 0.1, float(rng.uniform(0.25, 0.6)))
            near = rule.regions(patch_map, framing)
            whole = rule.regions_of(frame_map(patch_map, framing), framing)
            assert [r.box for r in near] == [r.box for r in whole]
            assert [r.area for r in near] == [r.area for r in whole]
            for a, b in zip(near, whole, strict=True):
                assert a.peak_residual == b.peak_residual and a.p_value == b.p_value
                assert a.mean_residual == pytest.approx(b.mean_residual, rel=1e-6)
