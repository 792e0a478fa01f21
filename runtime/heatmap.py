"""Heatmaps: the patch residual map drawn over the image the model saw (numpy and Pillow only)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from inctrl_runtime.files import atomic_path
from inctrl_runtime.preprocess import Preprocessing, model_view

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
) -> Image.Image:
    """Blend the colored patch residual map (P values, row-major square grid) over the image
    as the model saw it (a picture from ``model_views`` is that already: nothing is re-read).

    Residuals are ``0.5 * (1 - cos)``; ``vmax`` fixes the top of the color scale so that maps of
    different images compare.
    """
    config = config or Preprocessing()
    grid = int(round(len(patch_map) ** 0.5))
    values = np.asarray(patch_map, dtype=np.float32).reshape(grid, grid) / vmax
    smooth = Image.fromarray(values, mode="F").resize((config.size, config.size), Image.BILINEAR)
    colors = Image.fromarray(colorize(np.asarray(smooth)))
    return Image.blend(model_view(image, config), colors, alpha)


def save_heatmap(
    image: Image.Image,
    patch_map: np.ndarray,
    path: str | os.PathLike,
    config: Preprocessing | None = None,
) -> None:
    """Write the overlay as a PNG, atomically."""
    overlay = heatmap_overlay(image, patch_map, config=config)
    with atomic_path(path) as tmp:
        overlay.save(tmp, format="PNG")
