"""The tiler (``inctrl_runtime.tiling``): layouts that cover every pixel with the stated
overlap, tiles that are the frame's pixels, the stitched map, frame scores from tile scores,
and the refusals."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import Preprocessing, decode
from inctrl_runtime.regions import Framing, RegionRule
from inctrl_runtime.results import Scores, frame_scores, view_scores
from inctrl_runtime.tiling import DEFAULT_OVERLAP, Tiling, check_grid

pytestmark = pytest.mark.unit

S = 240
# width, height, grid: square, landscape, portrait, odd sizes, a camera frame
LAYOUTS = [
    (512, 512, "2x2"),
    (1024, 768, "2x2"),
    (1024, 768, "3x3"),
    (1024, 768, "4x4"),
    (1024, 768, "1x2"),
    (768, 1024, "3x2"),
    (1001, 777, "2x3"),
    (777, 1001, "4x3"),
    (2448, 2048, "3x4"),
    (241, 241, "1x1"),
]


@pytest.mark.parametrize(("width", "height", "grid"), LAYOUTS)
def test_tiles_are_squares_that_cover_every_pixel_with_the_stated_overlap(
    width: int, height: int, grid: str
) -> None:
    tiling = Tiling.parse(f"{grid}+whole")
    assert tiling.whole and str(tiling) == f"{grid}+whole"
    layout = tiling.layout(width, height, S)
    assert layout.count == tiling.count == len(layout.boxes)
    side = layout.side
    assert side == math.ceil(max(width / (tiling.columns - (tiling.columns - 1) / 8),
                                 height / (tiling.rows - (tiling.rows - 1) / 8)))  # fmt: skip
    assert S <= side <= min(width, height)
    grid = tiling.rows * tiling.columns
    covered = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in layout.boxes[:grid]:
        assert (x1 - x0, y1 - y0) == (side, side)
        assert x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height
        covered[y0:y1, x0:x1] += 1
    assert covered.min() >= 1  # every pixel is in a tile of the grid
    # the whole view, last: the largest centred square, where the untiled path looks (its
    # inspected box, up to the resize's rounding: a pixel of the view, and one more)
    square = min(width, height)
    x0, y0, x1, y1 = layout.boxes[grid]
    assert (x1 - x0, y1 - y0) == (square, square) and x0 >= 0 and y0 >= 0
    assert abs((width - x1) - x0) <= 1 and abs((height - y1) - y0) <= 1
    untiled = Framing(width, height, S).inspected_box()
    assert np.abs(np.subtract(layout.boxes[grid], untiled)).max() <= math.ceil(square / S) + 1
    # tiles numbered row by row; neighbours overlap by at least 1/8 of a side (one pixel of
    # rounding), along each axis
    boxes = np.array(layout.boxes[:grid]).reshape(tiling.rows, tiling.columns, 4)
    assert (np.diff(boxes[:, :, 0], axis=1) > 0).all() and (
        np.diff(boxes[:, :, 1], axis=0) > 0
    ).all()
    across = boxes[:, :-1, 2] - boxes[:, 1:, 0]  # right edge of a tile minus the next's left
    down = boxes[:-1, :, 3] - boxes[1:, :, 1]
    for shared in (across, down):
        assert (shared >= math.floor(DEFAULT_OVERLAP * side) - 1).all()
    assert layout.inspected_fraction == 1.0
    alone = Tiling(tiling.rows, tiling.columns, whole=False).layout(width, height, S)
    assert alone.boxes == layout.boxes[:grid] and alone.count == grid


def test_a_tile_holds_the_frame_s_pixels_and_the_model_sees_it_resized_whole() -> None:
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (300, 520, 3), dtype=np.uint8)
    decoded = decode(frame, Preprocessing(), tiling=Tiling(1, 2, whole=True))
    layout = decoded.layout
    assert decoded.frame == (520, 300) and len(decoded.views) == 3  # two tiles, the whole view
    assert layout.boxes[2] == (110, 0, 410, 300)
    for (x0, y0, x1, y1), tile, view in zip(
        layout.boxes, layout.crops(Image.fromarray(frame)), decoded.views, strict=True
    ):
        assert np.array_equal(np.asarray(tile), frame[y0:y1, x0:x1])
        resized = Image.fromarray(frame[y0:y1, x0:x1]).resize((S, S), Image.BICUBIC)
        assert np.array_equal(np.asarray(view), np.asarray(resized))
    assert decoded.pixels().shape == (3, 3, S, S)


@pytest.mark.parametrize(
    ("width", "height", "grid", "phrases"),
    [
        (1024, 768, "1x1", ["cannot cover a 1024 x 768 frame", "--tiles 1x2"]),
        (768, 1024, "1x1", ["cannot cover", "more rows", "--tiles 2x1"]),
        (2000, 500, "2x2", ["cannot cover", "--tiles 2x5"]),
        (512, 512, "3x3", ["would be 187 px, smaller than the model's 240-px input"]),
        (300, 300, "2x2", ["smaller than the model's 240-px input", "fewer tiles"]),
    ],
)
def test_grids_that_do_not_fit_the_frame_are_refused_in_one_line(
    width: int, height: int, grid: str, phrases: list[str]
) -> None:
    with pytest.raises(InputError) as refused:
        Tiling.parse(grid).layout(width, height, S, "frame.png")
    message = str(refused.value)
    assert "\n" not in message and message.startswith("frame.png: ")
    for phrase in phrases:
        assert phrase in message, message


@pytest.mark.parametrize(
    "text", ["3", "3x", "x3", "0x2", "2x0", "9x9", "2 by 2", "-1x2", "2x2+", "2x2 whole"]
)
def test_a_grid_is_rows_x_columns_of_1_to_64_tiles(text: str) -> None:
    with pytest.raises(InputError, match="--tiles"):
        Tiling.parse(text)


def test_a_grid_reads_either_case_and_prints_as_written() -> None:
    assert Tiling.parse(" 3X4 ") == Tiling(3, 4) and str(Tiling(3, 4)) == "3x4"
    assert Tiling.parse("3x4 + whole") == Tiling(3, 4, whole=True)
    whole = Tiling(2, 5, whole=True)
    assert Tiling.from_record(whole.record()) == whole and whole.count == 11
    alone = Tiling(2, 5)
    assert Tiling.from_record(alone.record()) == alone and alone.count == 10
    # a tiling kept before the whole view existed has none
    assert Tiling.from_record({"rows": 2, "columns": 5, "overlap": 0.125}) == alone


def test_the_grid_asked_for_must_be_the_bank_s() -> None:
    check_grid(Tiling(2, 2), Tiling(2, 2), "pcb")
    with pytest.raises(InputError, match="registered with 2x2\\+whole tiles.*--tiles 2x2\\+whole"):
        check_grid(Tiling(2, 2), Tiling(2, 2, whole=True), "pcb")
    with pytest.raises(InputError, match="registered with 3x4 tiles.*--tiles 3x4"):
        check_grid(Tiling(2, 2), Tiling(3, 4), "pcb")
    with pytest.raises(InputError, match="registered untiled"):
        check_grid(Tiling(2, 2), None, "pcb")


def _tile_maps(count: int, grid: int = 15, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, grid * grid)).astype(np.float32) * 0.1


def test_the_stitched_map_is_each_pixel_s_largest_tile_value() -> None:
    layout = Tiling(2, 3, whole=True).layout(800, 600, S)
    assert layout.count == 7 and layout.boxes[6] == (100, 0, 700, 600)  # the whole view
    maps = _tile_maps(layout.count)
    stitched = layout.map(maps.ravel())
    assert stitched.shape == (600, 800) and np.isfinite(stitched).all()
    # by hand: each tile's map at the tile's size, the largest where tiles overlap
    by_hand = np.full((600, 800), -np.inf, dtype=np.float32)
    for (x0, y0, x1, y1), cells in zip(layout.boxes, maps, strict=True):
        values = Framing(x1 - x0, y1 - y0, S).map(cells)
        by_hand[y0:y1, x0:x1] = np.maximum(by_hand[y0:y1, x0:x1], values)
    assert np.array_equal(stitched, by_hand)
    # its maximum is the largest tile maximum: the region rule's statistic
    assert stitched.max() == maps.max()
    small = layout.map(maps.ravel(), (150, 200))  # a picture of the frame for a heatmap
    assert small.shape == (150, 200) and small.max() <= maps.max()


def test_a_hot_patch_of_one_tile_lands_in_that_tile_of_the_frame() -> None:
    layout = Tiling(2, 2).layout(1024, 768, S)
    maps = np.zeros((layout.count, 225), dtype=np.float32)
    maps[3, 7 * 15 + 7] = 1.0  # the centre patch of the bottom-right tile
    rule = RegionRule(np.array([0.5], np.float32), 0.5, 0.5)
    (region,) = layout.regions(rule, maps.ravel())
    x0, y0, x1, y1 = layout.boxes[3]
    centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
    bx0, by0, bx1, by1 = region.box
    assert bx0 < centre_x < bx1 and by0 < centre_y < by1
    assert x0 <= bx0 and y0 <= by0 and bx1 <= x1 and by1 <= y1
    assert region.peak_residual == 1.0
    assert region.area_fraction == pytest.approx(region.area / (1024 * 768))
    assert layout.regions(rule, np.zeros(layout.count * 225, np.float32)) == []


def test_a_frame_s_score_is_its_largest_patch_residual() -> None:
    rng = np.random.default_rng(2)
    frames, tiles = 3, 4
    rows = frames * tiles

    def column() -> np.ndarray:
        return rng.random(rows).astype(np.float32)

    tile_scores = Scores(column(), column(), column(), column(), column(),
                         rng.random((rows, 225)).astype(np.float32))  # fmt: skip
    scores, decisive = frame_scores(tile_scores, tiles)
    by_frame = tile_scores.max_patch_residual.reshape(frames, tiles)
    assert np.array_equal(decisive, by_frame.argmax(axis=1))
    assert np.array_equal(scores.score, by_frame.max(axis=1))
    assert np.array_equal(scores.max_patch_residual, by_frame.max(axis=1))
    assert not np.array_equal(decisive, tile_scores.score.reshape(frames, tiles).argmax(axis=1))
    for name in ("holistic_score", "image_residual_score", "text_score"):
        picked = getattr(tile_scores, name).reshape(frames, tiles)[np.arange(frames), decisive]
        assert np.array_equal(getattr(scores, name), picked)
    whole, none = frame_scores(tile_scores, 1)  # scored whole: InCTRL's own final score
    assert whole is tile_scores and none is None
    assert np.array_equal(scores.patch_residual_map, tile_scores.patch_residual_map.reshape(3, -1))


def test_view_groups_and_their_scores_put_back_in_view_order() -> None:
    assert Tiling(2, 2).groups() == ((0, 1, 2, 3),)
    assert Tiling(2, 2, whole=True).groups() == ((0, 1, 2, 3), (4,))
    assert Tiling(1, 2, whole=True).groups(same_position=True) == ((0,), (1,), (2,))
    # 2 frames, views 0 and 1 (tiles) scored in one run, view 2 (whole) in another
    tiles = Scores(*(np.array([1.0, 2.0, 3.0, 4.0]),) * 5, np.arange(8.0).reshape(4, 2))
    whole = Scores(*(np.array([10.0, 20.0]),) * 5, np.array([[8.0, 9.0], [10.0, 11.0]]))
    views = view_scores([tiles, whole], ((0, 1), (2,)), 3)
    assert views.score.tolist() == [1.0, 2.0, 10.0, 3.0, 4.0, 20.0]  # frame by frame
    assert views.patch_residual_map[:, 0].tolist() == [0.0, 2.0, 8.0, 4.0, 6.0, 10.0]
    assert view_scores([tiles], ((0, 1),), 2) is tiles
