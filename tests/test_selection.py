"""Prompt selection from a pool (``inctrl_runtime.selection``): coverage on hand-made tokens,
the seeded random draw and pool split, and ``inctrl-run register --pool`` end to end."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from inctrl.data import Sample
from inctrl.evaluation import draw_prompts
from inctrl_runtime.errors import InputError
from inctrl_runtime.selection import (
    SELECTIONS,
    Selection,
    coverage_selection,
    mean_residual,
    random_draw,
    split_pool,
)


def unit_tokens(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded random unit-norm tokens (norm along the last axis)."""
    tokens = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)


def naive_mean_residual(patches: np.ndarray, chosen: list[int]) -> float:
    """The measure written out: per image, patch and layer, min over every prompt patch of
    0.5 * (1 - cos), averaged."""
    n, layers, count, _ = patches.shape
    total = 0.0
    for i, layer, p in itertools.product(range(n), range(layers), range(count)):
        cos = [patches[i, layer, p] @ patches[j, layer, q] for j in chosen for q in range(count)]
        total += 0.5 * (1.0 - max(cos))
    return total / (n * layers * count)


# ----------------------------------------------------------------------------- coverage
@pytest.mark.unit
def test_coverage_takes_the_known_best_prompt_then_the_uncovered_image() -> None:
    e1, e2, e3 = np.eye(3, dtype=np.float32)
    # One layer, two patches each: image 0 holds both e1 and e2, so it alone covers images 0-2
    # exactly and image 3 (e3, orthogonal) at residual 0.5: mean 0.5 / 4 = 0.125. Image 1
    # alone scores (0.25 + 0 + 0.5 + 0.5) / 4, image 3 alone (0.5 * 3 + 0) / 4.
    pool = np.stack([[[e1, e2]], [[e1, e1]], [[e2, e2]], [[e3, e3]]])
    assert pool.shape == (4, 1, 2, 3)
    assert coverage_selection(pool, 1) == Selection((0,), 0.125)
    assert mean_residual(pool, [1]) == 0.3125
    assert mean_residual(pool, [3]) == 0.375
    assert coverage_selection(pool, 2) == Selection((0, 3), 0.0)


@pytest.mark.unit
@pytest.mark.parametrize("k", [1, 2, 3])
def test_coverage_is_the_greedy_of_the_measure_written_out(k: int) -> None:
    pool = unit_tokens((6, 2, 5, 4), seed=k)
    chosen: list[int] = []
    for _ in range(k):  # the greedy step by brute force: every candidate's mean, the lowest
        rest = [j for j in range(len(pool)) if j not in chosen]
        chosen.append(min(rest, key=lambda j: naive_mean_residual(pool, [*chosen, j])))
    selection = coverage_selection(pool, k)
    assert selection.indices == tuple(chosen)
    assert selection.mean_residual == pytest.approx(naive_mean_residual(pool, chosen), abs=1e-6)
    assert mean_residual(pool, chosen) == pytest.approx(selection.mean_residual, abs=1e-6)


@pytest.mark.unit
def test_coverage_follows_the_images_not_their_order() -> None:
    pool = unit_tokens((9, 3, 6, 8), seed=3)
    order = np.random.default_rng(4).permutation(len(pool))
    for k in (1, 3, 5):
        want = coverage_selection(pool, k)
        got = coverage_selection(pool[order], k)
        assert tuple(int(order[i]) for i in got.indices) == want.indices
        assert got.mean_residual == pytest.approx(want.mean_residual, abs=1e-6)
        assert coverage_selection(pool, k) == want  # and the same pool, the same answer


@pytest.mark.unit
def test_coverage_ties_go_to_the_lowest_index() -> None:
    pool = np.repeat(unit_tokens((1, 2, 3, 4), seed=5), 4, axis=0)  # four equal images
    selection = coverage_selection(pool, 3)
    assert selection.indices == (0, 1, 2)
    assert selection.mean_residual == pytest.approx(0.0, abs=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("k", [2, 3])
def test_coverage_never_picks_both_of_a_near_duplicate_pair(k: int) -> None:
    distinct = unit_tokens((6, 3, 10, 16), seed=6)
    noise = 1e-3 * np.random.default_rng(7).standard_normal(distinct[0].shape)
    copy = distinct[0] + noise.astype(np.float32)
    copy /= np.linalg.norm(copy, axis=-1, keepdims=True)
    for where in range(len(distinct) + 1):  # the copy at every position of the pool
        pool = np.insert(distinct, where, copy, axis=0)
        pair = {0 if where > 0 else 1, where}
        chosen = set(coverage_selection(pool, k).indices)
        assert len(chosen) == k
        assert not pair <= chosen, (where, chosen)


@pytest.mark.unit
def test_coverage_and_the_measure_refuse_what_they_cannot_do() -> None:
    pool = unit_tokens((3, 1, 2, 4), seed=8)
    for bad in (0, 4):
        with pytest.raises(InputError, match=f"cannot select {bad} prompts from 3 images"):
            coverage_selection(pool, bad)
    with pytest.raises(InputError, match="n x L x P x D"):
        coverage_selection(pool[0], 1)
    with pytest.raises(InputError, match="at least one"):
        mean_residual(pool, [])
    with pytest.raises(InputError, match="not all in a pool of 3"):
        mean_residual(pool, [3])


# ------------------------------------------------------------------- random draw, split
def pool_paths(count: int) -> list[str]:
    return [f"/data/candle/train/good/{i:03d}.png" for i in range(count)]


@pytest.mark.unit
@pytest.mark.parametrize(("k", "seed"), [(1, 0), (2, 0), (2, 7), (4, 3)])
def test_random_draw_is_the_evaluations_draw(k: int, seed: int) -> None:
    paths = pool_paths(20)
    shuffled = random.Random(seed).sample(paths, len(paths))
    samples = [Sample(p, 0, "candle", "train") for p in shuffled]
    want = [s.image_path for s in draw_prompts(samples, k, seed, "candle")]
    assert random_draw(shuffled, k, seed, "candle") == want
    assert random_draw(paths, k, seed, "candle") == want
    assert SELECTIONS == ("coverage", "random")


@pytest.mark.unit
def test_split_pool_is_seeded_by_seed_and_category_not_by_order() -> None:
    paths = pool_paths(21)
    selection, calibration = split_pool(paths, 0, "candle", shots=2)
    assert len(calibration) == 10 and len(selection) == 11  # half, rounded down
    assert sorted(selection + calibration) == paths
    assert selection == sorted(selection) and calibration == sorted(calibration)
    for order in range(3):
        shuffled = random.Random(order).sample(paths, len(paths))
        assert split_pool(shuffled, 0, "candle", shots=2) == (selection, calibration)
    others = {tuple(split_pool(paths, seed, name)[1]) for seed, name in [(1, "candle"), (0, "x")]}
    assert tuple(calibration) not in others
    assert len(others) == 2


@pytest.mark.unit
def test_split_pool_sorts_by_the_key_given() -> None:
    samples = [Sample(p, 0, "candle", "train") for p in pool_paths(8)]
    by_path = split_pool(samples[::-1], 2, "candle", key=lambda s: s.image_path)
    plain = split_pool(pool_paths(8), 2, "candle")
    assert tuple([s.image_path for s in part] for part in by_path) == plain


@pytest.mark.unit
@pytest.mark.parametrize(("count", "shots"), [(0, 1), (1, 1), (2, 2), (4, 3)])
def test_split_pool_refuses_a_pool_too_small(count: int, shots: int) -> None:
    with pytest.raises(InputError, match=f"a pool of {count} images is too small") as err:
        split_pool(pool_paths(count), 0, "candle", shots=shots)
    assert "\n" not in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize(("count", "shots"), [(2, 1), (3, 2), (5, 3)])
def test_split_pool_at_its_smallest_leaves_k_for_selection(count: int, shots: int) -> None:
    selection, calibration = split_pool(pool_paths(count), 0, "candle", shots=shots)
    assert len(selection) >= shots and len(calibration) >= 1
