"""The few-shot rules every package shares: which files are images, how k prompts are drawn,
how their patch tokens are stacked into a reference bank.

torch-free (numpy arrays and torch tensors both pass through ``stack_prompts``), so that the
torch side, the export and the lean runtime draw and stack prompts the same way.
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from inctrl_runtime.errors import InputError

# What a folder of images may hold, lower case; ``.npy`` is an H x W (x C) array saved by numpy.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")

Item = TypeVar("Item")
Stackable = TypeVar("Stackable")  # a numpy array or a torch tensor


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in a folder, sorted by name (none if it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def prompt_generator(seed: int, category: str) -> random.Random:
    """The generator of a category's seeded draw: the same (seed, category), the same prompts,
    in every command that draws them (evaluation, ``inctrl prompts``, ``inctrl-export verify``)."""
    return random.Random(f"{seed}/{category}")


def choose_prompts(items: Sequence[Item], k: int, rng: random.Random) -> list[Item]:
    """k distinct items drawn at random, in the order drawn, advancing ``rng``.

    The one rule for choosing prompts. The draw depends on the order of ``items``: callers that
    want it independent of how they found the items sort them first. Training passes its
    resumable generator, seeded draws a ``prompt_generator``.
    """
    if not 0 < k <= len(items):
        raise InputError(f"cannot draw {k} prompts from {len(items)} images")
    return rng.sample(list(items), k)


def stack_prompts(patches: Stackable) -> Stackable:
    """The patch tokens of k prompts as one reference set per layer.

    Args:
        patches: k x L x P x D, or B x k x L x P x D (one prompt set per query, in training);
            a numpy array or a torch tensor.

    Returns:
        L x kP x D (or B x L x kP x D): for each layer the P patches of prompt 1, then of
        prompt 2, and so on.
    """
    *batch, shots, layers, count, width = patches.shape
    return patches.swapaxes(-4, -3).reshape((*batch, layers, shots * count, width))
