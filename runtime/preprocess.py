"""Image loading and preprocessing, in Pillow and numpy only (docs/model.md, "Preprocessing").

The steps reproduce torchvision's ``Resize(240, BICUBIC) -> CenterCrop(240) -> RGB -> ToTensor ->
Normalize`` on a PIL image, including its size arithmetic, so grayscale, RGBA, palette and 16-bit
images come out as the authors' pipeline makes them.

An image source is a path (an image file or ``.npy``), an encoded file's bytes, a PIL image or a
numpy array. ``decode`` reads one once into a ``DecodedImage``: its name, its size, the picture
the model sees (the encoder's input is made from it) and, when heatmaps are asked for, a capped
picture of the whole image to draw them on: nothing is read from disk again.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl_runtime.tiling import FrameTiling, TileLayout, Tiling

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# How large an image may be. The source: Pillow's own limit, Image.MAX_IMAGE_PIXELS (about 89.5
# million pixels unless changed there), read when an image is checked. Pillow warns above it and
# refuses above twice it, and never sees arrays; we refuse above it, for every source alike.
# After the resize: the shorter side becomes the model's size and the longer one follows, so an
# elongated image costs far more than its own pixels (a 129-byte 50000 x 1 PNG would become
# 12,000,000 x 240, 3.5 GB). 2**25 resized pixels is at most 128 MiB (4 bytes a pixel) and a
# fraction of a second; at size 240 it lets aspect ratios up to about 580:1 through, line-scan
# strips included (16384 x 512 is 32:1, 8000 x 100 is 80:1).
MAX_RESIZED_PIXELS = 1 << 25
# The longer side of the picture of a frame kept for its heatmap, unless asked otherwise: large
# enough to see a region, small enough that a batch of camera frames costs little memory.
DEFAULT_HEATMAP_SIZE = 512
MIN_PICTURE_SIDE = 256  # smaller images are drawn this large (captions and bars stay readable)


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
    if isinstance(source, bytes):
        return f"image of {len(source):,} bytes"
    if isinstance(source, Image.Image):
        return f"<PIL {source.mode} {source.width}x{source.height}>"
    return f"<array {getattr(source, 'dtype', '?')} {getattr(source, 'shape', '?')}>"


def is_one_image(source: object) -> bool:
    """Whether ``source`` is a single image rather than a sequence of them: a path, a file's
    bytes, a PIL image, or an H x W or H x W x C (C = 1, 3 or 4) array; any other array is a
    batch along axis 0."""
    if isinstance(source, np.ndarray):
        return source.ndim == 2 or (source.ndim == 3 and source.shape[2] in (1, 3, 4))
    return isinstance(source, (str, os.PathLike, bytes, Image.Image))


def image_sequence(images: ImageSource | Sequence[ImageSource]) -> Sequence[ImageSource]:
    """Images where a sequence of them is expected: a single image becomes a list of one (a
    path string is not walked character by character); a sequence or batch is left as it is."""
    return [images] if is_one_image(images) else images


def checked_images(
    images: ImageSource | Sequence[ImageSource] | np.ndarray, batch_size: int, empty: str | None
) -> Sequence[ImageSource] | np.ndarray:
    """The images of a call as a sequence (a single one is a list of one), refused when the
    batch size is not a whole number of at least 1, or when there are none and ``empty`` says
    why that is wrong (None: the caller refuses too few itself)."""
    found = image_sequence(images)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
    if len(found) == 0 and empty is not None:
        raise InputError(empty)
    return found


def check_size(name: str, width: int, height: int, size: int) -> None:
    """Refuse an image too large to hold: more pixels than Pillow's limit, or more than
    ``MAX_RESIZED_PIXELS`` once its shorter side is resized to ``size``. Call it with the size
    alone, before any pixel is decoded, copied or resized."""
    if width == 0 or height == 0:
        raise InputError(f"{name}: empty image (0 pixels)")
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise InputError(
            f"{name}: too many pixels ({width} x {height} = {width * height:,}, more than "
            f"Pillow's limit of {limit:,}); downscale or crop the image first"
        )
    new_width, new_height = resized_size(width, height, size)
    if new_width * new_height > MAX_RESIZED_PIXELS:
        raise InputError(
            f"{name}: too many pixels once resized ({width} x {height} becomes {new_width} x "
            f"{new_height} = {new_width * new_height:,}, more than the limit of "
            f"{MAX_RESIZED_PIXELS:,}); crop it to a less elongated shape first"
        )


def _check_array(array: np.ndarray, name: str, size: int) -> None:
    """Refuse an array that is no image, or too large, from its dtype and shape alone."""
    if array.size == 0:
        raise InputError(f"{name}: empty array (shape {array.shape})")
    channels = {2: 1, 3: array.shape[-1]}.get(array.ndim)
    uint8 = array.dtype == np.uint8 and channels in (1, 3, 4)
    if not uint8 and not (array.dtype == np.uint16 and channels == 1):
        raise InputError(
            f"{name}: unsupported array (dtype {array.dtype}, shape {array.shape}); give uint8 "
            "H x W, H x W x 3 or H x W x 4, or uint16 H x W"
        )
    check_size(name, array.shape[1], array.shape[0], size)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """A checked array as PIL: uint16 H x W becomes mode I;16, as Pillow reads a 16-bit PNG."""
    return Image.fromarray(array[:, :, 0] if array.ndim == 3 and array.shape[2] == 1 else array)


def load_image(source: ImageSource, size: int = Preprocessing.size) -> Image.Image:
    """Open a path (image file or ``.npy``) or an encoded file's bytes, or accept a PIL image or
    numpy array, as PIL.

    Files, bytes and arrays are checked (``check_size``, for resizing the shorter side to
    ``size``) before their pixels are decoded or copied; a PIL image is checked where it is
    resized. Errors name bytes by their length.
    """
    if isinstance(source, Image.Image):
        return source
    if isinstance(source, np.ndarray):
        _check_array(source, describe(source), size)
        return _array_to_pil(source)
    if isinstance(source, bytes):
        return _decode(io.BytesIO(source), describe(source), size)
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(f"cannot read an image from a {type(source).__name__}")
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # the header; no pixels yet
        except (OSError, ValueError) as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from None
        _check_array(array, str(path), size)
        return _array_to_pil(np.array(array))  # read into memory, detached from the file
    return _decode(path, str(path), size)


def _decode(file: Path | io.BytesIO, name: str, size: int) -> Image.Image:
    try:
        with Image.open(file) as image:  # reads the header only
            check_size(name, image.width, image.height, size)
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own check, in open() or in load() (a GIF frame, a TIFF tile), refused it
        # before ours could see its size (above twice its limit, or its warning made an error).
        raise InputError(
            f"{name}: too many pixels, a possible decompression bomb (Pillow: {_first_line(err)}"
            f"); images may have at most {Image.MAX_IMAGE_PIXELS:,} pixels: downscale or crop "
            "it first"
        ) from None
    except UnidentifiedImageError:
        # Pillow's text names the file object (an address, for bytes): say what it means.
        raise InputError(
            f"{name}: not a readable image (no image format Pillow reads: png, jpg, tiff, ...)"
        ) from None
    except (OSError, SyntaxError) as err:
        raise InputError(f"{name}: not a readable image ({_first_line(err)})") from None


def _first_line(err: Exception) -> str:
    return str(err).split("\n")[0].rstrip(".") or type(err).__name__


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
    check_size(describe(image), image.width, image.height, config.size)
    new_size = resized_size(image.width, image.height, config.size)
    if new_size != image.size:
        image = image.resize(new_size, Image.BICUBIC)
    image = image.crop(center_crop_box(image.width, image.height, config.size))
    return image.convert("RGB")


def normalized(view: Image.Image, config: Preprocessing = Preprocessing()) -> np.ndarray:
    """The encoder's input for one picture the model sees (``model_view``'s): 3 x size x size
    float32, scaled to [0, 1] and normalized by the mean and std."""
    pixels = np.asarray(view, dtype=np.float32) / np.float32(255.0)
    mean = np.asarray(config.mean, dtype=np.float32)
    std = np.asarray(config.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def preprocess(image: Image.Image, config: Preprocessing = Preprocessing()) -> np.ndarray:
    """One PIL image -> normalized float32 array 3 x size x size."""
    return normalized(model_view(image, config), config)


@dataclass(frozen=True)
class DecodedImage:
    """One image source decoded once: its name (``describe``), its size as given (``frame``:
    width, height), the pictures the model sees (``views``: the centred crop, or a tiled frame's
    tiles in tile order, with their ``layout``), and, when asked for, a picture of the whole
    frame for people (``picture``: no larger than a cap, for heatmaps). The encoder's inputs
    come from ``views``; the full-size picture is let go once these are made."""

    name: str
    views: tuple[Image.Image, ...]
    frame: tuple[int, int]
    picture: Image.Image | None = None
    layout: TileLayout | None = None

    def pixels(self, config: Preprocessing = Preprocessing()) -> np.ndarray:
        """The encoder's inputs: V x 3 x size x size float32 (``normalized``), one per view."""
        return np.stack([normalized(view, config) for view in self.views])


def check_heatmap_size(size: int | None) -> None:
    """A heatmap size is None (keep no picture) or a whole number of pixels, at least 16."""
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 16):
        raise InputError(
            f"--heatmap-size must be a whole number of pixels of at least 16, got {size!r}"
        )


def capped(image: Image.Image, longest: int) -> Image.Image:
    """An RGB picture of the whole image for people: its longer side at most ``longest``
    pixels, and small images enlarged up to ``MIN_PICTURE_SIDE`` (within ``longest``) so that
    what is drawn on them stays readable."""
    side = max(image.size)
    target = min(longest, max(side, MIN_PICTURE_SIDE))
    if target != side:
        scale = target / side
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.BILINEAR, reducing_gap=2.0 if scale < 1 else None)
    return image.convert("RGB")


def decode(
    source: ImageSource,
    config: Preprocessing = Preprocessing(),
    picture_size: int | None = None,
    tiling: Tiling | FrameTiling | None = None,
) -> DecodedImage:
    """Read an image source once (``load_image``, its checks included) and make the pictures
    the model sees from it: its centred crop, or with ``tiling`` its tiles (``Tiling.layout``,
    refused in one line where the grid does not fit the frame); with ``picture_size``, also a
    picture of the whole frame whose longer side is at most that many pixels (``capped``)."""
    image = load_image(source, config.size)
    name = describe(source)
    layout = None
    if tiling is None:
        views = (model_view(image, config),)
    else:
        layout = tiling.layout(image.width, image.height, config.size, name)
        views = tuple(model_view(tile, config) for tile in layout.crops(image))
    picture = None if picture_size is None else capped(image, picture_size)
    return DecodedImage(name, views, image.size, picture, layout)


def preprocess_many(
    sources: ImageSource | Sequence[ImageSource], config: Preprocessing = Preprocessing()
) -> np.ndarray:
    """Load and preprocess images: B x 3 x size x size float32 (B = 1 for a single source)."""
    sources = image_sequence(sources)
    if len(sources) == 0:
        raise InputError("no images given")
    return np.concatenate([decode(source, config).pixels(config) for source in sources])


def pixel_digest(pixels: np.ndarray) -> str:
    """sha256 of one preprocessed image, identifying a prompt image whatever its source."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.float32).tobytes()).hexdigest()


# The side of the square thumbnail a bank keeps of each prompt.
THUMBNAIL_SIZE = 96


def thumbnail(picture: Image.Image, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """A picture as a ``size`` x ``size`` x 3 uint8 thumbnail, letterboxed in white (a prompt's,
    as a bank keeps it)."""
    small = picture.convert("RGB")
    small.thumbnail((size, size), Image.BILINEAR)
    square = Image.new("RGB", (size, size), (255, 255, 255))
    square.paste(small, ((size - small.width) // 2, (size - small.height) // 2))
    return np.asarray(square)
