"""Synthetic defects: each paints one defect on an image and returns it with its mask."""

from __future__ import annotations

import numpy as np

from inctrl.synth.products import CATEGORIES, Category, Pair, draw_normal, mix, rgb

DEFECTS = ("scratch", "hole", "stain", "cut_paste", "warp")

# A defect painted on an image: the new H x W x 3 image and the H x W bool mask of the defect.
Painted = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Defects: each paints one defect on an image and returns the image and the defect's mask


def _pixels(size: int) -> Pair:
    return np.mgrid[0:size, 0:size].astype(np.float64)


def _pick_centre(
    rng: np.random.Generator, product: np.ndarray, on_edge: bool = False
) -> tuple[int, int]:
    """A pixel (row, col) on the product, away from the frame; ``on_edge`` prefers its outline."""
    size = product.shape[0]
    wanted = (product > 0.05) & (product < 0.95) if on_edge else product > 0.99
    inner = np.zeros_like(wanted)
    margin = max(2, size // 10)
    inner[margin:-margin, margin:-margin] = True
    rows, cols = np.nonzero(wanted & inner)
    if rows.size == 0:
        rows, cols = np.nonzero((product > 0.5) & inner)
    pick = rng.integers(rows.size)
    return int(rows[pick]), int(cols[pick])


def _contrasting(
    image: np.ndarray, row: int, col: int, palette: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """One of the two palette colours farthest from the image around (row, col)."""
    local = image[max(row - 3, 0) : row + 4, max(col - 3, 0) : col + 4].reshape(-1, 3).mean(0)
    farthest = np.argsort(-np.linalg.norm(palette - local, axis=1))[:2]
    return palette[rng.choice(farthest)]


def _polyline_distance(points: np.ndarray, size: int) -> np.ndarray:
    """Distance of every pixel centre to a polyline (N x 2 points, row and col): H x W."""
    rows, cols = _pixels(size)
    start, step = points[:-1, :, None, None], np.diff(points, axis=0)[:, :, None, None]
    offset_r, offset_c = rows - start[:, 0], cols - start[:, 1]
    length2 = np.maximum(step[:, 0] ** 2 + step[:, 1] ** 2, 1e-9)
    t = np.clip((offset_r * step[:, 0] + offset_c * step[:, 1]) / length2, 0, 1)
    return np.hypot(offset_r - t * step[:, 0], offset_c - t * step[:, 1]).min(axis=0)


def _scratch(
    rng: np.random.Generator, image: np.ndarray, product: np.ndarray, _: Category
) -> Painted:
    """A thin, slightly curved line, lighter or darker than the surface it crosses."""
    size = image.shape[0]
    row, col = _pick_centre(rng, product)
    angle = rng.uniform(0, 2 * np.pi)
    length, bend = size * rng.uniform(0.15, 0.35), rng.uniform(-0.15, 0.15)
    t = np.linspace(-0.5, 0.5, 12)
    along, across = (
        np.array([np.sin(angle), np.cos(angle)]),
        np.array([np.cos(angle), -np.sin(angle)]),
    )
    curve = -4 * bend * length * t**2
    points = np.array([row, col]) + np.outer(t * length, along) + np.outer(curve, across)
    width = max(1.0, size * rng.uniform(0.005, 0.01))
    alpha = np.clip(width / 2 + 0.5 - _polyline_distance(points, size), 0, 1) * product
    palette = np.array([[0.08, 0.08, 0.08], [0.95, 0.95, 0.93]])
    color = _contrasting(image, row, col, palette, rng)
    return mix(image, color, 0.9 * alpha), alpha >= 0.5


def _blob(rng: np.random.Generator, size: int, row: int, col: int, radius: float) -> Pair:
    """An irregular round blob: H x W coverage, and each pixel's distance over the blob radius."""
    rows, cols = _pixels(size)
    distance, angle = np.hypot(rows - row, cols - col), np.arctan2(rows - row, cols - col)
    harmonics = np.arange(2, 6)[:, None, None]
    wobble = rng.uniform(0, 0.15, 4)[:, None, None] * np.sin(
        harmonics * angle + rng.uniform(0, 2 * np.pi, 4)[:, None, None]
    )
    edge = radius * (1 + wobble.sum(axis=0))
    return np.clip(edge - distance + 0.5, 0, 1), distance / edge


def _hole(rng: np.random.Generator, image: np.ndarray, product: np.ndarray, _: Category) -> Painted:
    """A dark pit with a lighter broken rim."""
    size = image.shape[0]
    row, col = _pick_centre(rng, product)
    inside, depth = _blob(rng, size, row, col, max(2.0, size * rng.uniform(0.025, 0.055)))
    alpha = inside * product
    pit = 0.03 + 0.1 * np.clip(depth, 0, 1) ** 2
    shade = np.where(depth > 0.75, 0.45, pit)[..., None] * rgb(1.0, 0.97, 0.92)
    return mix(image, shade, alpha), alpha >= 0.5


def _stain(
    rng: np.random.Generator, image: np.ndarray, product: np.ndarray, _: Category
) -> Painted:
    """A translucent coloured blob, denser at its rim like a dried drop."""
    size = image.shape[0]
    row, col = _pick_centre(rng, product)
    inside, depth = _blob(rng, size, row, col, max(2.5, size * rng.uniform(0.04, 0.09)))
    palette = np.array([[0.6, 0.32, 0.12], [0.2, 0.17, 0.08], [0.15, 0.2, 0.6], [0.35, 0.55, 0.1]])
    color = _contrasting(image, row, col, palette, rng)
    opacity = rng.uniform(0.5, 0.75) * (0.8 + 0.3 * np.clip(depth, 0, 1) ** 3)
    alpha = inside * product
    return mix(image, color, np.clip(alpha * opacity, 0, 1)), alpha >= 0.5


def _cut_paste(
    rng: np.random.Generator, image: np.ndarray, product: np.ndarray, own: Category
) -> Painted:
    """A square patch, from elsewhere in the image or from another category, turned and pasted."""
    size = image.shape[0]
    side = max(3, int(size * rng.uniform(0.1, 0.2)))
    row, col = _pick_centre(rng, product)
    top, left = np.clip([row - side // 2, col - side // 2], 0, size - side)
    if rng.random() < 0.5:
        source, turns = image, int(rng.integers(1, 4))
    else:
        others = [category for category in CATEGORIES if category is not own]
        source, _ = draw_normal(others[rng.integers(len(others))], rng, size)
        turns = int(rng.integers(0, 4))
    src_top, src_left = rng.integers(0, size - side + 1, 2)
    patch = np.rot90(source[src_top : src_top + side, src_left : src_left + side], turns)
    image = image.copy()
    image[top : top + side, left : left + side] = patch
    mask = np.zeros((size, size), dtype=bool)
    mask[top : top + side, left : left + side] = True
    return image, mask


def _bilinear(image: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``image`` sampled at fractional pixel positions (clamped to the frame)."""
    size = image.shape[0]
    rows, cols = np.clip(rows, 0, size - 1), np.clip(cols, 0, size - 1)
    r0, c0 = np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)
    r1, c1 = np.minimum(r0 + 1, size - 1), np.minimum(c0 + 1, size - 1)
    fr, fc = (rows - r0)[..., None], (cols - c0)[..., None]
    top = image[r0, c0] * (1 - fc) + image[r0, c1] * fc
    bottom = image[r1, c0] * (1 - fc) + image[r1, c1] * fc
    return top * (1 - fr) + bottom * fr


def _warp(
    rng: np.random.Generator, image: np.ndarray, product: np.ndarray, own: Category
) -> Painted:
    """A local swirl (an elastic twist fading with distance); on objects, across the outline.

    The mask is the disc in which pixels move by at least one pixel.
    """
    size = image.shape[0]
    row, col = _pick_centre(rng, product, on_edge=own.kind == "object")
    sigma = max(3.0, size * rng.uniform(0.05, 0.08))
    twist = rng.uniform(0.9, 1.6) * rng.choice([-1.0, 1.0])
    rows, cols = _pixels(size)
    dr, dc = rows - row, cols - col
    distance = np.hypot(dr, dc)
    theta = twist * np.exp(-(distance**2) / (2 * sigma**2))
    src_r = row + np.cos(theta) * dr - np.sin(theta) * dc
    src_c = col + np.sin(theta) * dr + np.cos(theta) * dc
    moved = np.hypot(src_r - rows, src_c - cols)
    warped = np.where((moved > 1e-3)[..., None], _bilinear(image, src_r, src_c), image)
    return warped, distance <= distance[moved >= 1.0].max(initial=0.0)


PAINTERS = {
    "scratch": _scratch,
    "hole": _hole,
    "stain": _stain,
    "cut_paste": _cut_paste,
    "warp": _warp,
}
