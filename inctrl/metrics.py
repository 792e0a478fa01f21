"""Anomaly detection metrics on scores and patch maps: image AUROC / AUPRC, pixel AUROC.

Pure functions on arrays (scikit-learn does the ranking), plus the one step that brings a
ground-truth mask into the model's view of its image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score

from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import center_crop_box, load_image, resized_size

# Above this many test pixels in a category, pixel AUROC uses a deterministic sample of them.
PIXEL_LIMIT = 1 << 21


def image_metrics(targets: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """Image AUROC and AUPRC (average precision) of anomaly scores; targets 1 = anomalous."""
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    return float(roc_auc_score(targets, scores)), float(average_precision_score(targets, scores))


def mask_in_model_view(
    mask_path: str | os.PathLike, image_path: str | os.PathLike, size: int = 240
) -> np.ndarray:
    """A ground-truth mask where the model sees its image: shorter side resized to ``size``
    (nearest), the preprocessing's center crop, binarized (> 127). Returns size x size bool."""
    mask = load_image(mask_path, size)
    image_size = load_image(image_path, size).size
    if mask.size != image_size:
        raise InputError(
            f"{mask_path}: mask is {mask.width}x{mask.height}, but its image {image_path} is "
            f"{image_size[0]}x{image_size[1]}; masks must have their image's size"
        )
    mask = mask.convert("L")
    new_size = resized_size(mask.width, mask.height, size)
    if new_size != mask.size:
        mask = mask.resize(new_size, Image.NEAREST)
    return np.asarray(mask.crop(center_crop_box(mask.width, mask.height, size))) > 127


def pixel_selection(masks: np.ndarray, limit: int = PIXEL_LIMIT) -> np.ndarray | None:
    """Flat indices of the pixels pixel AUROC uses: None (all) up to ``limit`` pixels, else a
    fixed-seed sample of at most ``limit``, sorted. Each class is sampled on its own (all of a
    small one), which keeps AUROC unbiased as it does not depend on the class ratio."""
    flat = masks.reshape(-1)
    if flat.size <= limit:
        return None
    rng = np.random.default_rng(0)
    positive, negative = np.flatnonzero(flat), np.flatnonzero(~flat)
    take_positive = min(positive.size, limit // 2)
    take_negative = min(negative.size, limit - take_positive)
    chosen = [
        rng.choice(positive, take_positive, replace=False),
        rng.choice(negative, take_negative, replace=False),
    ]
    return np.sort(np.concatenate(chosen))


def pixel_auroc(
    patch_maps: torch.Tensor, masks: np.ndarray, selection: np.ndarray | None = None
) -> float | None:
    """Pixel AUROC of patch residual maps against masks; None if the pixels are all one class.

    Args:
        patch_maps: n x P, each map row-major over a square grid, upsampled bilinearly
            (``align_corners=False``) to the mask size.
        masks: n x S x S bool, in the model's view (``mask_in_model_view``).
        selection: sorted flat indices into ``masks`` (``pixel_selection``); None for all.
    """
    n, size = masks.shape[0], masks.shape[-1]
    grid = math.isqrt(patch_maps.shape[1])
    flat = masks.reshape(-1)
    labels = flat if selection is None else flat[selection]
    if labels.all() or not labels.any():
        return None
    per_image, chunk = size * size, 32  # upsample a few maps at a time to bound memory
    values = []
    for start in range(0, n, chunk):
        maps = patch_maps[start : start + chunk].float().reshape(-1, 1, grid, grid)
        upsampled = F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)
        upsampled = upsampled.reshape(-1).cpu().numpy()
        if selection is not None:
            low, high = np.searchsorted(selection, [start * per_image, (start + chunk) * per_image])
            upsampled = upsampled[selection[low:high] - start * per_image]
        values.append(upsampled)
    return float(roc_auc_score(labels, np.concatenate(values)))
