"""Choosing k prompt images from a pool of normal ones, and splitting a pool for calibration.

``coverage`` picks the prompts that best cover the pool's patch tokens, by the model's own
measure (the head's nearest-prompt patch residual); ``random`` is the seeded draw of
``inctrl evaluate`` (``fewshot.choose_prompts`` on the pool sorted by path). A calibration set
must hold no image the selection saw, or the calibrated false-positive rate is biased low:
``split_pool`` sets it apart first.

torch-free (numpy only): ``inctrl-run register --pool`` and the torch side (``inctrl prompts
make``, ``inctrl evaluate``) select the same way.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import choose_prompts, prompt_generator

SELECTIONS = ("coverage", "random")

T = TypeVar("T")

# Pool images per matrix product when measuring distances: bounds the temporary
# chunk x P x P block (about 32 MB for P = 225, float32).
_CHUNK = 160


class Selection(NamedTuple):
    """Prompts chosen from a pool."""

    indices: tuple[int, ...]  # into the pool given, in the order chosen
    mean_residual: float  # the pool's mean nearest-prompt patch residual with these prompts


def _check(patches: np.ndarray, k: int) -> np.ndarray:
    patches = np.asarray(patches, dtype=np.float32)
    if patches.ndim != 4:
        raise InputError(f"pool patch tokens must be n x L x P x D, got shape {patches.shape}")
    if not 0 < k <= len(patches):
        raise InputError(f"cannot select {k} prompts from {len(patches)} images")
    return patches


def _nearest_similarity(pool: np.ndarray, prompt: np.ndarray) -> np.ndarray:
    """For every pool patch, its highest cosine to a patch of one prompt image.

    Args:
        pool: n x L x P x D unit-norm patch tokens; prompt: L x P' x D.

    Returns:
        n x L x P float32 (per layer, as the head compares layer with layer).
    """
    n, layers, count, width = pool.shape
    best = np.empty((n, layers, count), dtype=np.float32)
    for layer in range(layers):
        flat = np.ascontiguousarray(pool[:, layer]).reshape(n * count, width)
        for start in range(0, n, _CHUNK):
            stop = min(start + _CHUNK, n)
            dots = flat[start * count : stop * count] @ prompt[layer].T  # images x P rows
            best[start:stop, layer] = dots.max(axis=1).reshape(stop - start, count)
    return best


def _residual(similarity: np.ndarray) -> np.ndarray:
    """0.5 * (1 - cos): the head's patch residual (cos of unit-norm tokens is their dot)."""
    return 0.5 * (1.0 - similarity)


def _mean(residuals: np.ndarray) -> float:
    """The mean over images of the mean over patches of the mean over layers: every image has
    L x P entries, so it is the plain mean (accumulated in float64 for a stable order)."""
    return float(residuals.mean(dtype=np.float64))


def mean_residual(patches: np.ndarray, chosen: Sequence[int]) -> float:
    """The pool's mean nearest-prompt patch residual with the pool images ``chosen`` as prompts.

    Args:
        patches: n x L x P x D float32, unit-norm patch tokens of the pool.
        chosen: indices into the pool (at least one).
    """
    if not chosen:
        raise InputError("no prompts chosen: the mean residual needs at least one")
    patches = _check(patches, 1)
    if not all(0 <= j < len(patches) for j in chosen):
        raise InputError(f"prompt indices {list(chosen)} are not all in a pool of {len(patches)}")
    best = np.maximum.reduce([_nearest_similarity(patches, patches[j]) for j in chosen])
    return _mean(_residual(best))


def _all_nearest(patches: np.ndarray) -> np.ndarray:
    """n x n x L x P: entry [j, i] holds pool image i's nearest similarity to prompt j.

    Each pair's P x P block of dots is computed once: its row maxima give [j, i], its column
    maxima [i, j]. One matrix product per prompt and chunk of images, on one layer's tokens.
    """
    n, layers, count, width = patches.shape
    best = np.empty((n, n, layers, count), dtype=np.float32)
    for layer in range(layers):
        tokens = np.ascontiguousarray(patches[:, layer])  # n x P x D
        flat = tokens.reshape(n * count, width)
        for j in range(n):
            for start in range(j, n, _CHUNK):
                stop = min(start + _CHUNK, n)
                dots = flat[start * count : stop * count] @ tokens[j].T
                block = dots.reshape(stop - start, count, count)  # images x P(i) x P(j)
                best[j, start:stop, layer] = block.max(axis=2)
                best[start:stop, j, layer] = block.max(axis=1)
    return best


def coverage_selection(patches: np.ndarray, k: int) -> Selection:
    """k prompts that cover a pool's patch tokens: greedy facility location.

    Each step adds the image that most lowers the pool's mean over images of the mean over
    patches of M = mean over layers of min over prompt patches of 0.5 * (1 - cos), i.e. the
    head's patch residual map with those prompts. Ties go to the lowest index, so a pool gives
    the same prompts every time (callers that want it independent of how they listed the pool
    sort it first). A near copy of a chosen image lowers the mean by almost nothing, so it is
    not picked while a distinct image remains; when only exact copies of chosen images remain
    (k above the pool's distinct images), the selection is refused in one line.

    Args:
        patches: n x L x P x D float32, unit-norm patch tokens of the n pool images (the
            encoder's ``patches`` output, numpy; torch callers pass ``.cpu().numpy()``).
            Memory: n^2 x L x P float32 (about 6.8 MB for n = 50 at L = 3, P = 225).
        k: the number of prompts, 1 <= k <= n.
    """
    patches = _check(patches, k)
    residuals = _residual(_all_nearest(patches))  # [j, i]: image i's residual to prompt j
    current = np.full(residuals.shape[1:], np.inf, dtype=np.float32)
    chosen: list[int] = []
    value = float("inf")
    for _ in range(k):
        means = [
            np.inf if j in chosen else _mean(np.minimum(current, residuals[j]))
            for j in range(len(patches))
        ]
        best = int(np.argmin(means))  # the first of equal means: the lowest index
        if chosen and means[best] >= value:  # every image left is a copy of a chosen one
            distinct = f"{len(chosen)} image" + ("s" if len(chosen) > 1 else "")
            raise InputError(
                f"cannot select {k} coverage prompts: the pool holds {distinct} and copies of "
                "them; give more distinct images or fewer --shots"
            )
        chosen.append(best)
        current = np.minimum(current, residuals[best])
        value = means[best]
    return Selection(tuple(chosen), value)


def random_draw(
    items: Sequence[T], k: int, seed: int, category: str, key: Callable[[T], object] = str
) -> list[T]:
    """The ``random`` selection: k items drawn by the category's ``prompt_generator`` from the
    items sorted by ``key`` (default ``str``: a path's text), as ``inctrl evaluate`` draws its
    prompts, so the same (seed, category) and pool give the same prompts whatever their order."""
    return choose_prompts(sorted(items, key=key), k, prompt_generator(seed, category))


def split_pool(
    items: Sequence[T],
    seed: int,
    category: str,
    shots: int = 1,
    key: Callable[[T], object] = str,
) -> tuple[list[T], list[T]]:
    """(selection part, calibration part) of a pool of normal images.

    The calibration part is a seeded draw of half the pool (rounded down), the selection part
    the rest, at least ``shots`` images; both are returned sorted by ``key``. The items are
    sorted by ``key`` (default ``str``: a path's text) before the draw, so the split depends
    only on (seed, category) and the items, not on their order; keys must be distinct. The
    generator is the category's, apart from its prompt draw's (``fewshot.prompt_generator``),
    so the split and a ``random`` selection on its selection part are independent draws.
    """
    ordered = sorted(items, key=key)
    calibration_size = len(ordered) // 2
    if calibration_size < 1 or len(ordered) - calibration_size < shots:
        need = max(2, 2 * shots - 1)
        raise InputError(
            f"a pool of {len(ordered)} images is too small to split into {shots} prompts and "
            f"a calibration set: give at least {need} images"
        )
    rng = random.Random(f"{seed}/{category}/calibration")
    drawn = set(rng.sample(range(len(ordered)), calibration_size))
    selection = [item for i, item in enumerate(ordered) if i not in drawn]
    calibration = [item for i, item in enumerate(ordered) if i in drawn]
    return selection, calibration
