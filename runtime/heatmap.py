"""Heatmaps: the patch residual map drawn over the image the model saw (numpy and Pillow only)."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from inctrl_runtime.preprocess import Preprocessing, model_view

_CAPTION_HEIGHT = 20  # pixels of the strip under a heatmap that holds its caption
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


def heatmap_overlay(
    image: Image.Image,
    patch_map: np.ndarray,
    vmax: float = 0.5,
    alpha: float = 0.5,
    config: Preprocessing | None = None,
    caption: str | None = None,
) -> Image.Image:
    """Blend the colored patch residual map (P values, row-major square grid) over the image
    as the model saw it (a picture from ``model_views`` is that already: nothing is re-read),
    with ``caption`` (e.g. the score and decision) on a strip under it.

    Residuals are ``0.5 * (1 - cos)``; ``vmax`` fixes the top of the color scale so that maps of
    different images compare.
    """
    config = config or Preprocessing()
    grid = int(round(len(patch_map) ** 0.5))
    values = np.asarray(patch_map, dtype=np.float32).reshape(grid, grid) / vmax
    smooth = Image.fromarray(values, mode="F").resize((config.size, config.size), Image.BILINEAR)
    colors = Image.fromarray(colorize(np.asarray(smooth)))
    overlay = Image.blend(model_view(image, config), colors, alpha)
    return overlay if caption is None else _with_caption(overlay, caption)


def _with_caption(picture: Image.Image, caption: str) -> Image.Image:
    """``picture`` with a dark strip under it holding one line of text (Pillow's built-in
    font: no font file needed)."""
    font = ImageFont.load_default(size=_CAPTION_HEIGHT - 6)
    framed = Image.new("RGB", (picture.width, picture.height + _CAPTION_HEIGHT), (16, 16, 16))
    framed.paste(picture, (0, 0))
    ImageDraw.Draw(framed).text((4, picture.height + 3), caption, fill=(240, 240, 240), font=font)
    return framed
