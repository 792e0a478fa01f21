"""Values that used to be accepted silently: an empty ``--select`` is no selection method,
``--keep-fp32`` wants both parts of KIND:BLOCK, and coverage refuses to pick copies of a chosen
image as further prompts (k above the pool's distinct images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inctrl_runtime.cli
from inctrl_export.quantize import fp32_choice
from inctrl_runtime.errors import InputError
from inctrl_runtime.selection import coverage_selection

from helpers import random_images, run_main, snapshot


def unit_tokens(count: int, seed: int) -> np.ndarray:
    """``count`` images' seeded unit-norm patch tokens, 1 x 9 x 4 each."""
    tokens = np.random.default_rng(seed).normal(size=(count, 1, 9, 4)).astype(np.float32)
    return tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)


@pytest.mark.unit
def test_coverage_refuses_to_pick_copies() -> None:
    a, b = unit_tokens(2, seed=1)
    with pytest.raises(InputError, match="holds 1 image and copies of them"):
        coverage_selection(np.stack([a, a, a, a]), 2)
    with pytest.raises(InputError, match="holds 2 images and copies of them"):
        coverage_selection(np.stack([a, a, a, b]), 3)
    picked = coverage_selection(np.stack([a, a, a, b]), 2).indices
    assert sorted(picked) in ([0, 3], [1, 3], [2, 3])  # one of the copies, and the other image


@pytest.mark.unit
@pytest.mark.parametrize("choice", [":3", "c_fc:", ":", "", "c_proj:3:4", "c_proj:x", "x"])
def test_a_keep_fp32_choice_names_what_it_keeps(choice: str) -> None:
    with pytest.raises(InputError, match="--keep-fp32"):
        fp32_choice(choice)
    assert fp32_choice("c_proj:3") == ("c_proj", 3) and fp32_choice("3") == (None, 3)
    assert fp32_choice("c_fc") == ("c_fc", None)


@pytest.mark.cli
def test_an_empty_select_is_refused(bundle: Path, tmp_path: Path) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for index, array in enumerate(random_images(4, seed=8)):
        np.save(pool / f"good{index}.npy", array)
    before = snapshot(bundle)
    outcome = run_main(inctrl_runtime.cli.main, "register", bundle, "--category", "candle",
                       "--pool", pool, "--shots", "2", "--select", "")  # fmt: skip
    outcome.assert_refused("unknown --select ''")
    assert snapshot(bundle) == before
