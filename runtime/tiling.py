"""Full-resolution inspection: a frame cut into square tiles, each scored as an image of its own,
and the tiles' patch maps stitched back into one map of the whole frame (numpy and Pillow only;
docs/tiling.md states the rules).

A grid of R x C tiles (``Tiling``, written ``RxC``) lays out over a W x H frame as
``Tiling.layout`` says: every tile is a square of side

    t = ceil(max(W / (C - (C - 1) f), H / (R - (R - 1) f)))        (f: the overlap, 1/8)

and the tiles of a row (column) start evenly spread from the frame's left (top) edge to its
right (bottom) edge. So the tiles cover every pixel, and neighbouring tiles share at least
f * t pixels along each axis (more along the axis the grid covers generously: square tiles on a
non-square frame). A tile is a square, so the model's preprocessing (the shorter side to S, the
centred crop) only resizes it: every pixel of the frame is inspected.

Besides the grid's tiles, a tiling may have one more view, the **whole view** (``RxC+whole``):
the frame's largest centred square (the part of the frame the untiled path sees), seen whole at
the coarse scale, in a bank of its own, so that a defect as large as the tiles keeps the map the
untiled view gives it.

Tiles are numbered row by row (tile ``r * C + c``), the whole view last (tile ``R * C``). The
stitched map takes, at each pixel, the largest of the maps of the views that hold it, so a
defect seen by any view shows, and the stitched map's maximum is the largest of the views'
``max_patch_residual`` (each view's map reaches its grid's maximum: ``regions.frame_map``): the
region threshold's rule holds for a tiled frame as for an untiled one.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inctrl_runtime.errors import InputError
from inctrl_runtime.regions import Framing, Region, RegionRule, frame_map

# The least share of a tile's side that neighbouring tiles overlap by, along each axis.
DEFAULT_OVERLAP = 0.125
_GRID = re.compile(r"\s*(\d+)\s*[xX]\s*(\d+)\s*(\+\s*whole)?\s*")
MAX_TILES = 64


@dataclass(frozen=True)
class Tiling:
    """A grid of ``rows`` x ``columns`` square tiles that overlap by at least ``overlap`` of a
    tile's side."""

    rows: int
    columns: int
    overlap: float = DEFAULT_OVERLAP
    whole: bool = False  # the whole view (the frame's largest centred square) as a last view

    def __post_init__(self) -> None:
        if min(self.rows, self.columns) < 1 or self.rows * self.columns > MAX_TILES:
            raise InputError(
                f"--tiles {self}: a grid has 1 to {MAX_TILES} tiles in all, e.g. 2x2 or 3x4"
            )
        if not 0 <= self.overlap < 1:
            raise InputError(f"a tile overlap is a share of a tile's side in [0, 1), got "
                             f"{self.overlap!r}")  # fmt: skip

    @classmethod
    def parse(cls, text: str) -> Tiling:
        """``RxC`` (rows x columns, e.g. ``3x4``), or ``RxC+whole`` with the whole view, as a
        Tiling with the default overlap."""
        found = _GRID.fullmatch(str(text))
        if found is None:
            raise InputError(
                f"--tiles {text!r}: give the grid as ROWSxCOLUMNS, e.g. --tiles 2x2 or 3x4, and "
                "+whole for the whole view beside them (2x2+whole)"
            )
        return cls(int(found.group(1)), int(found.group(2)), whole=found.group(3) is not None)

    def __str__(self) -> str:
        return f"{self.rows}x{self.columns}" + ("+whole" if self.whole else "")

    @property
    def count(self) -> int:
        """T, the number of views a frame is scored in: the grid's tiles and the whole view."""
        return self.rows * self.columns + self.whole

    def groups(self, same_position: bool = False) -> tuple[tuple[int, ...], ...]:
        """The view positions that share a bank: the grid's tiles (every prompt tile meets
        every query tile) and the whole view apart (it meets the prompts' whole views: another
        scale); with ``same_position``, each position apart."""
        if same_position:
            return tuple((view,) for view in range(self.count))
        grid = tuple(range(self.rows * self.columns))
        return (grid, (len(grid),)) if self.whole else (grid,)

    def describe(self) -> str:
        """The views in words, e.g. "4 tiles and the whole view"."""
        return f"{self.rows * self.columns} tiles" + (" and the whole view" if self.whole else "")

    def layout(self, width: int, height: int, size: int, name: str = "a frame") -> TileLayout:
        """The tiles over a ``width`` x ``height`` frame for a model of input ``size`` (S);
        refused in one line when square tiles of this grid cannot cover the frame, or would
        be smaller than S (``name`` says which frame)."""
        side = math.ceil(
            max(width / self._spread(self.columns), height / self._spread(self.rows)) - 1e-9
        )
        if side > min(width, height):
            more = "columns" if width > height else "rows"
            raise InputError(
                f"{name}: {self} square tiles cannot cover a {width} x {height} frame; use "
                f"more {more}, e.g. --tiles {self._covering(width, height)}"
            )
        if side < size:
            raise InputError(
                f"{name}: {self} tiles of a {width} x {height} frame would be {side} px, smaller "
                f"than the model's {size}-px input; use fewer tiles, or score it untiled"
            )
        xs, ys = _starts(width, side, self.columns), _starts(height, side, self.rows)
        boxes = [(x, y, x + side, y + side) for y in ys for x in xs]
        if self.whole:
            square = min(width, height)
            x, y = (width - square) // 2, (height - square) // 2
            boxes.append((x, y, x + square, y + square))
        return TileLayout(self, width, height, side, size, tuple(boxes))

    def _spread(self, tiles: int) -> float:
        """How many tile sides ``tiles`` tiles in a line span, overlaps taken off."""
        return tiles - (tiles - 1) * self.overlap

    def _covering(self, width: int, height: int) -> Tiling:
        """The nearest grid with this one's short-side count whose square tiles cover the
        frame."""
        short, long = sorted((width, height))
        across = self.rows if width > height else self.columns
        need = across
        while long / self._spread(need) > short:
            need += 1
        rows, columns = (across, need) if width > height else (need, across)
        return Tiling(rows, columns, self.overlap, self.whole)

    def record(self) -> dict:
        """As a bank and a record keep it."""
        return {"rows": self.rows, "columns": self.columns, "overlap": self.overlap,
                "whole": self.whole}  # fmt: skip

    @classmethod
    def from_record(cls, record: dict) -> Tiling:
        """A kept tiling; one kept before the whole view existed has none."""
        return cls(int(record["rows"]), int(record["columns"]), float(record["overlap"]),
                   bool(record.get("whole", False)))  # fmt: skip


@dataclass(frozen=True)
class FrameTiling:
    """A grid for frames of one size only (a tiled bank's, whose prompts' tiles lie where its
    queries' do): a frame of another size is refused in one line, naming ``whose`` size it
    must have."""

    tiling: Tiling
    frame_size: tuple[int, int]
    whose: str  # e.g. "the bank of 'pcb'"

    @property
    def count(self) -> int:
        return self.tiling.count

    def __str__(self) -> str:
        return str(self.tiling)

    def layout(self, width: int, height: int, size: int, name: str = "a frame") -> TileLayout:
        """``Tiling.layout`` of a frame of the one size."""
        if (width, height) != tuple(self.frame_size):
            frame_width, frame_height = self.frame_size
            raise InputError(
                f"{name}: a {width} x {height} frame; its tiles are compared with {self.whose}, "
                f"cut from {frame_width} x {frame_height} frames: give frames of that size, or "
                "register a tiled bank for this one"
            )
        return self.tiling.layout(width, height, size, name)


def check_grid(asked: Tiling, registered: Tiling | None, category: str) -> None:
    """Refuse, in one line, a ``--tiles`` grid other than the one the category's bank was
    registered with (its queries are cut as its prompts were)."""
    if registered is None:
        raise InputError(
            f"--tiles {asked}: {category!r} was registered untiled; register it again with "
            f"--tiles {asked} to score it tile by tile"
        )
    if (asked.rows, asked.columns, asked.whole) != (registered.rows, registered.columns,
                                                    registered.whole):  # fmt: skip
        raise InputError(
            f"--tiles {asked}: {category!r} was registered with {registered} tiles, and its "
            f"queries are cut the same way; give --tiles {registered} (or leave it out), or "
            f"register it again with --tiles {asked}"
        )


def _starts(length: int, side: int, tiles: int) -> list[int]:
    """Where ``tiles`` tiles of ``side`` pixels start along an axis of ``length``, evenly spread
    from one end to the other."""
    if tiles == 1:
        return [(length - side) // 2]
    return [round(i * (length - side) / (tiles - 1)) for i in range(tiles)]


@dataclass(frozen=True)
class TileLayout:
    """A ``Tiling`` laid over one frame: the tiles' boxes (x0, y0, x1, y1; ends exclusive), in
    tile order, the grid's squares of ``side`` pixels then the whole view's square, and the
    model's input size S."""

    tiling: Tiling
    width: int
    height: int
    side: int
    size: int  # S
    boxes: tuple[tuple[int, int, int, int], ...]

    @property
    def count(self) -> int:
        return len(self.boxes)

    @property
    def inspected_fraction(self) -> float:
        """Every pixel is in some tile."""
        return 1.0

    def inspected_box(self) -> tuple[int, int, int, int]:
        return (0, 0, self.width, self.height)

    def view_name(self, index: int) -> str:
        """View ``index`` in words: a tile of the grid, or the whole view."""
        if self.tiling.whole and index == self.count - 1:
            return f"the whole view of {self.tiling}"
        return f"tile {index} of {self.tiling}"

    def crops(self, image: Image.Image) -> list[Image.Image]:
        """The frame's tiles as pictures, in tile order (each a square)."""
        return [image.crop(box) for box in self.boxes]

    def tile_maps(self, patch_maps: np.ndarray) -> np.ndarray:
        """The T tiles' patch maps (T * P values, tile by tile, each row-major) as T x P."""
        return np.asarray(patch_maps, dtype=np.float32).reshape(self.count, -1)

    def map(self, patch_maps: np.ndarray, shape: tuple[int, int] | None = None) -> np.ndarray:
        """The stitched map of the whole frame: a float32 ``shape`` (height, width; default the
        frame's own) picture, each pixel the largest of the maps of the tiles that hold it."""
        height, width = shape if shape is not None else (self.height, self.width)
        down, across = height / self.height, width / self.width
        stitched = np.full((height, width), -np.inf, dtype=np.float32)
        for (x0, y0, x1, y1), cells in zip(self.boxes, self.tile_maps(patch_maps), strict=True):
            top, bottom = round(y0 * down), max(round(y1 * down), round(y0 * down) + 1)
            left, right = round(x0 * across), max(round(x1 * across), round(x0 * across) + 1)
            bottom, right = min(bottom, height), min(right, width)
            # a tile is a square: resized into the model, nothing cropped
            framing = Framing(x1 - x0, y1 - y0, self.size)
            values = frame_map(cells, framing, (bottom - top, right - left))
            np.fmax(stitched[top:bottom, left:right], values, out=stitched[top:bottom, left:right])
        return stitched

    def regions(self, rule: RegionRule, patch_maps: np.ndarray) -> list[Region]:
        """The regions of the stitched map above ``rule``'s threshold, largest peak first; a
        frame whose tiles have no patch above it costs nothing."""
        if not (self.tile_maps(patch_maps) > rule.threshold).any():
            return []
        return rule.regions_of(self.map(patch_maps), self)

    def record(self) -> dict:
        """What a scored frame's record says of its tiling."""
        return {**self.tiling.record(), "side": self.side, "boxes": [list(b) for b in self.boxes]}
