"""Heatmaps: the patch residual map drawn over the user's whole frame (numpy and Pillow only).

The map is carried into the frame by ``regions.frame_map`` (a tiled frame's is stitched by
``tiling.TileLayout.map``); the band the preprocessing's crop cut off is greyed (not inspected),
regions are outlined, a colour bar on the right gives the scale (and the region threshold), and a
strip under the picture holds the caption.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inctrl_runtime.regions import Framing, Region
from inctrl_runtime.tiling import TileLayout

_ALPHA = 0.5  # how much of the colour covers the picture
_CAPTION_HEIGHT = 20  # pixels of the strip under a heatmap that holds its caption
_BAR_WIDTH = 64  # pixels right of the picture holding the colour bar and its labels
_NOT_INSPECTED_GREY = np.float32(128)
_BOX = (255, 48, 48)
_TILE = (235, 235, 235)  # a tiled frame's deciding tile's outline
# A perceptually ordered dark-blue -> yellow ramp (viridis-like), interpolated in numpy.
_RAMP = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float32
)


def colorize(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to RGB uint8 along the ramp."""
    position = np.clip(values, 0.0, 1.0) * (len(_RAMP) - 1)
    low = np.floor(position).astype(int).clip(0, len(_RAMP) - 2)
    frac = (position - low)[..., None]
    return (_RAMP[low] * (1 - frac) + _RAMP[low + 1] * frac).astype(np.uint8)


def _font(size: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=size)  # Pillow's built-in font: no font file needed


def heatmap_picture(
    picture: Image.Image,
    patch_map: np.ndarray,
    framing: Framing | TileLayout,
    caption: str | None = None,
    regions: Sequence[Region] = (),
    region_threshold: float | None = None,
    tile: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """The patch residual map (P values, row-major square grid; a tiled frame's T * P)
    coloured over ``picture``, a picture of the whole frame ``framing`` describes (any size:
    ``preprocess.capped``'s). The not-inspected band is greyed, each region's box outlined, and
    a colour bar drawn right of it; ``caption`` (e.g. the score and decision) goes on a strip
    under it; ``tile`` (a tiled frame's deciding tile: x0, y0, x1, y1) is outlined thinly.

    The colour scale runs from 0 to twice the region threshold where there is one (the
    threshold in the middle of the bar, marked; every map of a category on one scale), else
    to the map's own maximum."""
    picture = picture.convert("RGB")
    values = framing.map(patch_map, (picture.height, picture.width))
    top = np.nanmax(values) if region_threshold is None else 2 * region_threshold
    vmax = float(top) if np.isfinite(top) and top > 0 else 1.0
    base = np.asarray(picture, dtype=np.float32)
    inspected = ~np.isnan(values)
    colours = colorize(np.where(inspected, values, 0) / vmax).astype(np.float32)
    blended = np.where(
        inspected[..., None],
        base * (1 - _ALPHA) + colours * _ALPHA,
        base * 0.35 + _NOT_INSPECTED_GREY * 0.65,
    )
    drawn = Image.fromarray(blended.round().astype(np.uint8))
    draw = ImageDraw.Draw(drawn)
    across, down = picture.width / framing.width, picture.height / framing.height
    if tile is not None:
        x0, y0, x1, y1 = tile
        box = (x0 * across, y0 * down, x1 * across - 1, y1 * down - 1)
        draw.rectangle(box, outline=_TILE, width=1)
    for region in regions:
        x0, y0, x1, y1 = region.box
        box = (x0 * across, y0 * down, max(x0 * across, x1 * across - 1),
               max(y0 * down, y1 * down - 1))  # fmt: skip
        draw.rectangle(box, outline=_BOX, width=2)
    return _framed(drawn, caption, vmax, region_threshold)


def _framed(
    picture: Image.Image, caption: str | None, vmax: float, region_threshold: float | None
) -> Image.Image:
    """``picture`` with the colour bar on its right and the caption strip under it; the
    canvas is widened where the caption needs it."""
    font = _font(_CAPTION_HEIGHT - 6)
    text_width = 8 + int(font.getlength(caption)) if caption else 0
    width = max(picture.width + _BAR_WIDTH, text_width)
    strip = _CAPTION_HEIGHT if caption else 0
    framed = Image.new("RGB", (width, picture.height + strip), (16, 16, 16))
    framed.paste(picture, (0, 0))
    draw = ImageDraw.Draw(framed)
    _colour_bar(draw, picture.width + 8, picture.height, vmax, region_threshold)
    if caption:
        draw.text((4, picture.height + 3), caption, fill=(240, 240, 240), font=font)
    return framed


def _colour_bar(
    draw: ImageDraw.ImageDraw, left: int, height: int, vmax: float, threshold: float | None
) -> None:
    """A vertical ramp from 0 (bottom) to ``vmax`` (top), labelled, with the threshold's tick."""
    font = _font(11)
    top, bottom = 8, height - 8
    span = max(1, bottom - top)
    ramp = colorize(np.linspace(1, 0, span, dtype=np.float32))
    for row, colour in enumerate(ramp):
        draw.line([(left, top + row), (left + 10, top + row)], fill=tuple(int(c) for c in colour))
    grey = (200, 200, 200)
    draw.text((left + 14, top - 4), f"{vmax:.3g}", fill=grey, font=font)
    draw.text((left + 14, bottom - 8), "0", fill=grey, font=font)
    if threshold is not None and 0 <= threshold <= vmax:
        y = bottom - round(threshold / vmax * span)
        draw.line([(left - 3, y), (left + 13, y)], fill=_BOX, width=2)
        draw.text((left + 14, y - 6), f"t {threshold:.3g}", fill=_BOX, font=font)
