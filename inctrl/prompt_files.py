"""The authors' few-shot prompt files (docs/model.md, "The authors'
checkpoints and prompt files").

``<few_shot_dir>/<category>.pt`` is a ``torch.save`` of a list of k preprocessed 3 x S x S
tensors (S = 240): the exact prompt images a published result was measured with.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path


def read_prompt_file(path: str | os.PathLike, size: int = 240) -> torch.Tensor:
    """The prompt images of one ``<category>.pt`` file as a float32 k x 3 x size x size tensor.

    Takes the authors' list (or tuple) of 3 x size x size tensors, or one stacked tensor.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such few-shot prompt file (expected <category>.pt)")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for foreign or hostile files
        reason = str(err).strip().split("\n")[0][:200] or type(err).__name__
        raise InputError(f"{path}: not a readable torch file ({reason})") from None
    if isinstance(content, torch.Tensor) and content.dim() == 4:
        content = list(content)
    if not isinstance(content, (list, tuple)) or not content:
        raise InputError(
            f"{path}: expected a non-empty list of 3 x {size} x {size} tensors, "
            f"found {type(content).__name__}"
        )
    for index, image in enumerate(content):
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            raise InputError(f"{path}: entry {index} is not a floating-point tensor")
        if tuple(image.shape) != (3, size, size):
            raise InputError(
                f"{path}: entry {index} has shape {tuple(image.shape)}; expected a "
                f"preprocessed image of shape (3, {size}, {size})"
            )
    pixels = torch.stack([image.float() for image in content])
    if not torch.isfinite(pixels).all():
        raise InputError(f"{path}: holds NaN or infinite pixel values")
    return pixels


def write_prompt_file(path: str | os.PathLike, pixels: torch.Tensor) -> None:
    """Write k preprocessed images (k x 3 x S x S) as the authors do: a list of 3 x S x S tensors.

    The file appears complete or not at all.
    """
    if pixels.dim() != 4 or pixels.shape[1] != 3 or pixels.shape[0] == 0:
        raise InputError(f"prompt images must be k x 3 x S x S, got {tuple(pixels.shape)}")
    # Each image gets its own storage, so a file holds only its k images.
    images = [image.detach().float().cpu().clone() for image in pixels]
    with atomic_path(path) as tmp:
        torch.save(images, tmp)
