"""The few-shot rules every package shares: which files are images, which category names may
become file names, how k prompts are drawn, how their patch tokens are stacked into a reference
bank and what shapes a bank must have.

torch-free (numpy arrays and torch tensors both pass through ``stack_prompts``), so that the
torch side, the export and the lean runtime draw and stack prompts the same way.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from inctrl_runtime.errors import InputError

# What a folder of images may hold, lower case; ``.npy`` is an H x W (x C) array saved by numpy.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".npy")

# Category names become file names (references/<c>.npz, <c>.pt, <c>_val_normal.json): letters,
# digits and ``_ . + -``, not starting with a dot, so that no name can point outside its folder.
_CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")

Item = TypeVar("Item")
Stackable = TypeVar("Stackable")  # a numpy array or a torch tensor


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly in a folder, sorted by name (none if it is not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def check_category_name(category: str) -> None:
    """Refuse a category name that cannot safely become a file name."""
    if not isinstance(category, str) or not _CATEGORY_NAME.fullmatch(category):
        raise InputError(
            f"category name {category!r} is not usable as a file name: use letters, digits, "
            "'_', '-', '.', '+' (not starting with '.')"
        )


def category_file(folder: str | os.PathLike, category: str, suffix: str) -> Path:
    """``folder/<category><suffix>``, the one way a category becomes a file name (checked)."""
    check_category_name(category)
    return Path(folder) / f"{category}{suffix}"


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


@dataclass(frozen=True)
class BankShape:
    """The shapes a model's reference banks have: L tapped layers, P patches per prompt image of
    width D, embeddings of size E (torch's ``ReferenceBank`` and the runtime's ``NumpyBank``)."""

    layers: int
    patches_per_shot: int
    width: int
    embed_dim: int

    def problem(
        self, patches: Sequence[int], adapted_mean: Sequence[int], shots: int, model: str
    ) -> str:
        """What is wrong with a bank of these array shapes and k = ``shots`` for this model, in
        words ("" when it fits)."""
        want = (self.layers, shots * self.patches_per_shot, self.width)
        if shots < 1:
            return f"it holds {shots} prompt images"
        if tuple(patches) != want:
            return f"its patch tokens are {tuple(patches)}, {model} needs {want} for k = {shots}"
        if tuple(adapted_mean) != (self.embed_dim,):
            return f"its adapted mean is {tuple(adapted_mean)}, {model} needs ({self.embed_dim},)"
        return ""
