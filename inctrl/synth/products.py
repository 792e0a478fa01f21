"""Synthetic products: procedural textures and objects, drawn with numpy."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

# A drawn product: H x W x 3 float RGB in [0, 1], and H x W coverage of the product in [0, 1]
# (all ones for textures, the object's anti-aliased silhouette for objects).
Canvas = tuple[np.ndarray, np.ndarray]
# Two H x W arrays: coordinates (u, v or row, col), or a blob's coverage and relative radius.
Pair = tuple[np.ndarray, np.ndarray]


# ---------------------------------------------------------------------------------------------
# Drawing helpers


def _grid(rng: np.random.Generator, size: int, max_angle: float, max_shift: float) -> Pair:
    """Pixel-centre coordinates in [-1, 1] (u right, v down), randomly rotated (degrees) and
    shifted, so the product sits slightly differently in every image."""
    t = (np.arange(size) + 0.5) / size * 2 - 1
    u, v = np.meshgrid(t, t)
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle))
    du, dv = rng.uniform(-max_shift, max_shift, 2)
    u, v = u - du, v - dv
    return np.cos(angle) * u + np.sin(angle) * v, -np.sin(angle) * u + np.cos(angle) * v


def _noise(rng: np.random.Generator, size: int, rows: int, cols: int | None = None) -> np.ndarray:
    """Smooth value noise in about [0, 1]: a rows x cols random grid upsampled bicubically."""
    grid = rng.random((max(rows, 2), max(cols or rows, 2)), dtype=np.float32)
    return np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC), dtype=np.float64)


def _fractal(rng: np.random.Generator, size: int, cells: int, octaves: int) -> np.ndarray:
    """Octaves of value noise, each twice as fine and half as strong, normalised to [0, 1]."""
    total = sum(0.5**k * _noise(rng, size, cells * 2**k) for k in range(octaves))
    return total / sum(0.5**k for k in range(octaves))


def _coverage(sdf: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased inside-ness of a signed distance (in grid units, negative inside)."""
    return np.clip(0.5 - sdf * size / 2, 0.0, 1.0)


def mix(base: np.ndarray, color: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``base`` (H x W x 3) painted over with ``color`` (3 or H x W x 3) at opacity H x W."""
    return base + (np.asarray(color) - base) * alpha[..., None]


def rgb(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)


def _background(rng: np.random.Generator, size: int, color: np.ndarray) -> np.ndarray:
    return color * (0.92 + 0.16 * _noise(rng, size, 6))[..., None]


# ---------------------------------------------------------------------------------------------
# Categories: textures fill the frame, objects sit on a background


def _fabric(rng: np.random.Generator, size: int) -> Canvas:
    """Plain-weave cloth: warp and weft threads alternate over and under."""
    u, v = _grid(rng, size, 4, 1.0)
    threads = 8 * rng.uniform(0.97, 1.03)
    x, y = (u + 1) * threads, (v + 1) * threads
    across_warp, across_weft = np.sin(np.pi * (x % 1)), np.sin(np.pi * (y % 1))
    warp_on_top = (np.floor(x) + np.floor(y)) % 2 == 0
    shade = np.where(
        warp_on_top,
        np.sqrt(across_warp) * (0.75 + 0.25 * across_weft),
        np.sqrt(across_weft) * (0.75 + 0.25 * across_warp),
    )
    shade = shade + 0.12 * (_noise(rng, size, max(size // 4, 2)) - 0.5)
    color = np.where(warp_on_top[..., None], rgb(0.22, 0.3, 0.55), rgb(0.3, 0.4, 0.62))
    return color * (0.4 + 0.6 * shade)[..., None], np.ones((size, size))


def _wood(rng: np.random.Generator, size: int) -> Canvas:
    """Flat-sawn board: curved growth rings bent by low-frequency noise, and fibre streaks."""
    u, v = _grid(rng, size, 3, 1.0)
    rings = 6 * rng.uniform(0.95, 1.05)
    t = (v + 0.2 * u**2 + 0.3 * _fractal(rng, size, 3, 2)) * rings
    late_wood = (0.5 + 0.5 * np.cos(2 * np.pi * t)) ** 4
    streaks = _noise(rng, size, max(size // 3, 2), 5)
    amount = np.clip(0.65 * late_wood + 0.35 * streaks, 0, 1)
    light = np.broadcast_to(rgb(0.8, 0.6, 0.38), (size, size, 3))
    return mix(light, rgb(0.5, 0.3, 0.15), amount), np.ones((size, size))


def _tile(rng: np.random.Generator, size: int) -> Canvas:
    """Terrazzo tile: mottled grey stone with dark chips and light specks."""
    stone = rgb(0.62, 0.6, 0.56) * (0.8 + 0.4 * _fractal(rng, size, 4, 3))[..., None]
    chips = np.clip((_noise(rng, size, max(size // 10, 2)) - 0.68) * 15, 0, 1)
    specks = np.clip((_noise(rng, size, max(size // 4, 2)) - 0.75) * 15, 0, 1)
    image = mix(mix(stone, rgb(0.28, 0.28, 0.3), chips), rgb(0.88, 0.86, 0.8), specks)
    return image, np.ones((size, size))


def _stripes(rng: np.random.Generator, size: int) -> Canvas:
    """Diagonal three-colour woven stripes with a fine twill texture."""
    u, v = _grid(rng, size, 3, 1.0)
    t = (u + v) * 4 * rng.uniform(0.97, 1.03)
    palette = np.array([[0.78, 0.22, 0.18], [0.95, 0.86, 0.62], [0.18, 0.32, 0.52]])
    stripe = np.floor(t).astype(np.int64)
    edge = 12 / size  # about one pixel, so stripe borders are anti-aliased
    blend = np.clip(((t % 1) - (1 - edge)) / edge, 0, 1)
    color = mix(palette[stripe % 3], palette[(stripe + 1) % 3], blend)
    twill = 0.5 + 0.5 * np.sin(2 * np.pi * (u - v) * size / 10)
    return color * (0.88 + 0.12 * twill)[..., None], np.ones((size, size))


def _washer(rng: np.random.Generator, size: int) -> Canvas:
    """A brushed-metal flat washer on a dark mat, lit from the upper left."""
    u, v = _grid(rng, size, 0, 0.04)
    radius = np.hypot(u, v)
    sdf = np.maximum(radius - 0.62 * rng.uniform(0.98, 1.02), 0.26 - radius)
    brushing = np.interp(
        radius, np.linspace(0, 1, max(size // 3, 8)), rng.random(max(size // 3, 8))
    )
    light = 0.6 + 0.2 * np.cos(np.arctan2(v, u) + 2.4)
    bevel = 0.75 + 0.25 * np.clip(-sdf / 0.05, 0, 1)
    metal = rgb(0.74, 0.74, 0.77) * (light * bevel + 0.12 * (brushing - 0.5))[..., None]
    product = _coverage(sdf, size)
    return mix(_background(rng, size, rgb(0.15, 0.16, 0.2)), metal, product), product


def _rounded_rect_sdf(
    u: np.ndarray, v: np.ndarray, half_w: float, half_h: float, r: float
) -> np.ndarray:
    qu, qv = np.abs(u) - half_w + r, np.abs(v) - half_h + r
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0) - r


def _chip(rng: np.random.Generator, size: int) -> Canvas:
    """A black integrated-circuit package with eight pins a side, on a green board."""
    u, v = _grid(rng, size, 4, 0.04)
    body_sdf = _rounded_rect_sdf(u, v, 0.46, 0.32, 0.04)
    pitch = 0.92 / 8
    pin_u = (u + 0.46) % pitch - pitch / 2
    pin_sdf = np.maximum.reduce([np.abs(pin_u) - pitch * 0.28, np.abs(u) - 0.46, np.abs(v) - 0.5])
    body, pins = _coverage(body_sdf, size), _coverage(pin_sdf, size)
    mark = _coverage(np.hypot(u + 0.34, v + 0.2) - 0.045, size)
    tin = rgb(0.78, 0.78, 0.74) * (0.7 + 0.3 * np.cos(3 * (np.abs(v) - 0.32)))[..., None]
    plastic = rgb(0.13, 0.13, 0.15) * (1.0 - 0.1 * (u + v))[..., None]
    plastic = mix(plastic, rgb(0.25, 0.25, 0.27), mark)
    board = _background(rng, size, rgb(0.12, 0.38, 0.2))
    return mix(mix(board, tin, pins), plastic, body), np.maximum(body, pins)


def _ring(rng: np.random.Generator, size: int) -> Canvas:
    """A red rubber O-ring on a light tray, shaded as a tube lit from above."""
    u, v = _grid(rng, size, 0, 0.04)
    radius = np.hypot(u, v)
    across = (radius - 0.55) / 0.085  # -1 .. 1 across the tube
    height = np.sqrt(np.clip(1 - across**2, 0, 1))
    facing = np.clip(height * 0.8 - 0.5 * across * v / np.maximum(radius, 1e-6), 0, 1)
    highlight = np.exp(-(((across + 0.35) / 0.25) ** 2)) * np.clip(
        -v / np.maximum(radius, 1e-6), 0, 1
    )
    rubber = rgb(0.55, 0.1, 0.08) * (0.35 + 0.75 * facing)[..., None] + 0.25 * highlight[..., None]
    product = _coverage(np.abs(radius - 0.55) - 0.085, size)
    return mix(_background(rng, size, rgb(0.86, 0.86, 0.83)), rubber, product), product


@dataclass(frozen=True)
class Category:
    """A synthetic product: its folder name, ``texture`` or ``object``, and how to draw it."""

    name: str
    kind: str
    draw: Callable[[np.random.Generator, int], Canvas]


# Textures and objects alternate, so the first few categories already mix both kinds.
CATEGORIES = (
    Category("synth_fabric", "texture", _fabric),
    Category("synth_washer", "object", _washer),
    Category("synth_wood", "texture", _wood),
    Category("synth_chip", "object", _chip),
    Category("synth_tile", "texture", _tile),
    Category("synth_ring", "object", _ring),
    Category("synth_stripes", "texture", _stripes),
)
BY_NAME = {category.name: category for category in CATEGORIES}


def draw_normal(category: Category, rng: np.random.Generator, size: int) -> Canvas:
    """A defect-free image: the product plus per-image colour, brightness and sensor noise."""
    image, product = category.draw(rng, size)
    gain = rng.uniform(0.97, 1.03, 3) * rng.uniform(0.93, 1.07)
    image = image * gain + rng.normal(0.0, 0.012, image.shape)
    return np.clip(image, 0.0, 1.0), product
