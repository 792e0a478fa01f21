"""Image loading and preprocessing, in Pillow and numpy only (docs/model.md, "Preprocessing").

The steps reproduce torchvision's ``Resize(240, BICUBIC) -> CenterCrop(240) -> RGB -> ToTensor ->
Normalize`` on a PIL image, including its size arithmetic, so grayscale, RGBA, palette and 16-bit
images come out as the authors' pipeline makes them.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from inctrl_runtime.errors import InputError

ImageSource = str | os.PathLike | Image.Image | np.ndarray


@dataclass(frozen=True)
class Preprocessing:
    """What turns a picture into the model's input; the bundle manifest records the same."""

    size: int = 240
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    def to_manifest(self) -> dict:
        """The steps spelled out for the bundle manifest (what ``from_manifest`` accepts)."""
        return {
            "resize_shorter_side": self.size,
            "interpolation": "bicubic",
            "center_crop": self.size,
            "color": "RGB",
            "scale": 1 / 255,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    @classmethod
    def from_manifest(cls, record: dict) -> Preprocessing:
        """Read the manifest's preprocessing; steps this code does not implement are refused
        rather than approximated."""
        expected = cls(size=record["resize_shorter_side"]).to_manifest()
        fixed = ("interpolation", "center_crop", "color", "scale")
        different = [k for k in fixed if record.get(k) != expected[k]]
        if different:
            raise ValueError(f"unsupported preprocessing steps: {', '.join(different)}")
        return cls(
            size=int(record["resize_shorter_side"]),
            mean=tuple(float(v) for v in record["mean"]),
            std=tuple(float(v) for v in record["std"]),
        )


def describe(source: ImageSource) -> str:
    """A short name for an image source, for messages and provenance."""
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.width}x{source.height}>"
    return f"<array {getattr(source, 'dtype', '?')} {getattr(source, 'shape', '?')}>"


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    if array.size == 0:
        raise InputError(f"{name}: empty array (shape {array.shape})")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint16 and array.ndim == 2:
        return Image.fromarray(array)  # mode I;16, as Pillow reads a 16-bit PNG
    color = array.ndim == 3 and array.shape[2] in (3, 4)
    if array.dtype == np.uint8 and (array.ndim == 2 or color):
        return Image.fromarray(array)
    raise InputError(
        f"{name}: unsupported array (dtype {array.dtype}, shape {array.shape}); give uint8 "
        "H x W, H x W x 3 or H x W x 4, or uint16 H x W"
    )


def load_image(source: ImageSource) -> Image.Image:
    """Open a path (image file or ``.npy``), or accept a PIL image or numpy array, as PIL."""
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        return _array_to_pil(source, describe(source))
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read an image from a {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from None
        return _array_to_pil(array, str(path))
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        reason = str(err).split("\n")[0] or type(err).__name__
        raise InputError(f"{path}: not a readable image ({reason})") from None


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Width and height after scaling the shorter side to ``size`` (torchvision's arithmetic)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def center_crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a centered ``size`` crop, rounded as torchvision does."""
    top = int(round((height - size) / 2.0))
    left = int(round((width - size) / 2.0))
    return left, top, left + size, top + size


def model_view(image: Image.Image, config: Preprocessing = Preprocessing()) -> Image.Image:
    """The resized, center-cropped RGB picture the model sees (and heatmaps are drawn on); a
    picture that already is one passes through as it is."""
    if image.mode == "RGB" and image.size == (config.size, config.size):
        return image
    if image.width == 0 or image.height == 0:
        raise InputError(f"{describe(image)}: empty image (0 pixels)")
    new_size = resized_size(image.width, image.height, config.size)
    if new_size != image.size:
        image = image.resize(new_size, Image.BICUBIC)
    image = image.crop(center_crop_box(image.width, image.height, config.size))
    return image.convert("RGB")


def preprocess(image: Image.Image, config: Preprocessing = Preprocessing()) -> np.ndarray:
    """One PIL image -> normalized float32 array 3 x size x size."""
    pixels = np.asarray(model_view(image, config), dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def model_views(
    sources: Sequence[ImageSource], config: Preprocessing = Preprocessing()
) -> list[Image.Image]:
    """Each source decoded once into the picture the model sees: keep these to score and to
    draw heatmaps on without reading the files again (``preprocess_many`` takes them as they
    are)."""
    return [model_view(load_image(source), config) for source in sources]


def preprocess_many(
    sources: Sequence[ImageSource], config: Preprocessing = Preprocessing()
) -> np.ndarray:
    """Load and preprocess images: B x 3 x size x size float32."""
    if not sources:
        raise InputError("no images given")
    return np.stack([preprocess(view, config) for view in model_views(sources, config)])


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of one preprocessed image, identifying a prompt image whatever its source."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()
