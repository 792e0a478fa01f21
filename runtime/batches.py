"""The one batch loop: images decoded once a batch (and cut into a tiled bank's views), their
pixels made from the views, and encoded; every call that encodes images runs it
(``Detector.encoded_batches``), and ``pool`` too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import DecodedImage, ImageSource, Preprocessing, decode
from inctrl_runtime.tiling import FrameTiling, Tiling

Features = dict[str, Any]  # numpy arrays, or the encoder engine's device values
Images = Sequence[ImageSource] | np.ndarray  # sources, or preprocessed B x 3 x S x S pixels
ProgressUpdate = Callable[[int], None]  # hears the number of images done after each batch
Encode = Callable[..., Features]  # (pixels, on_device=...) -> the encoder's outputs


@dataclass(frozen=True)
class EncodedBatch:
    """One batch of the loop: its images decoded once (None for pixels given as they are),
    the encoder's input made from their views (one per image, or a tiled frame's T views),
    and the encoder's outputs: a row per view, image by image; for a bank of several view
    groups (``Tiling.groups``), one encoder run per group, of the views at its positions."""

    names: list[str]  # ``describe`` of each image
    decoded: list[DecodedImage] | None
    pixels: np.ndarray  # (B * V) x 3 x S x S float32, V views per image
    features: tuple[Features, ...]  # one per view group (one: every view)

    @property
    def frame_pixels(self) -> np.ndarray:
        """The encoder's input image by image: B x V x 3 x S x S."""
        return self.pixels.reshape(len(self.names), -1, *self.pixels.shape[1:])


def encoded_batches(
    encode: Encode,
    preprocessing: Preprocessing,
    images: Images,
    batch_size: int,
    on_device: bool = False,
    progress: ProgressUpdate | None = None,
    picture_size: int | None = None,
    tiling: Tiling | FrameTiling | None = None,
    groups: Sequence[Sequence[int]] | None = None,
) -> Iterator[EncodedBatch]:
    """The one batch loop, for images checked by ``checked_images``: each batch's images
    decoded once (``picture_size``: keeping a picture of each frame that large, for
    heatmaps; ``tiling``: cut into views, all of a batch's views encoded together, or with
    ``groups``, those of each group of view positions together), their pixels made from
    the views, and encoded (``on_device``: the features stay on the GPU); ``progress``
    hears of the images done once the caller has taken a batch."""
    for start in range(0, len(images), batch_size):
        part = images[start : start + batch_size]
        if isinstance(part, np.ndarray) and part.ndim == 4:  # preprocessed pixels
            names = [f"<pixels {start + i}>" for i in range(len(part))]
            decoded, pixels = None, part
        else:
            decoded = [decode(source, preprocessing, picture_size, tiling) for source in part]
            names = [image.name for image in decoded]
            pixels = np.concatenate([image.pixels(preprocessing) for image in decoded])
        if groups is None:
            features = (encode(pixels, on_device=on_device),)
        else:
            by_image = pixels.reshape(len(part), -1, *pixels.shape[1:])
            features = tuple(
                encode(np.ascontiguousarray(by_image[:, list(group)].reshape(
                    -1, *pixels.shape[1:])), on_device=on_device)
                for group in groups
            )  # fmt: skip
        yield EncodedBatch(names, decoded, pixels, features)
        if progress is not None:
            progress(start + len(part))


def check_tiled_sources(images: Images, tiling: Tiling | None, what: str = "a tiled bank") -> None:
    """Tiles are cut from frames: refuse pixels given already preprocessed for ``what``."""
    if tiling is not None and isinstance(images, np.ndarray) and images.ndim == 4:
        raise InputError(
            f"{what} is tiled ({tiling}): give frames (files, bytes, pictures), not "
            "preprocessed pixels"
        )


def check_frames(batch: EncodedBatch, frame_size: tuple[int, int]) -> None:
    """Refuse, in one line, a prompt of a tiled bank whose frame has not the first prompt's
    size (a tiled bank's tiles lie where its queries' do)."""
    for image in batch.decoded or ():
        if tuple(image.frame) != tuple(frame_size):
            width, height = image.frame
            raise InputError(
                f"{image.name}: a {width} x {height} frame, the first prompt's is "
                f"{frame_size[0]} x {frame_size[1]}: a tiled bank's prompts are frames of one size"
            )
