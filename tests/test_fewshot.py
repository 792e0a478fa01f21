"""The shared few-shot rules (``inctrl_runtime.fewshot``) on hand-made arrays and folders."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import (
    IMAGE_SUFFIXES,
    choose_prompts,
    list_images,
    prompt_generator,
    stack_prompts,
)

pytestmark = pytest.mark.unit


def test_stack_prompts_on_numpy_equals_the_transpose_reshape() -> None:
    shots, layers, patches, width = 3, 2, 4, 5
    tokens = np.arange(shots * layers * patches * width, dtype=np.float32)
    tokens = tokens.reshape(shots, layers, patches, width)
    stacked = stack_prompts(tokens)
    assert stacked.shape == (layers, shots * patches, width)
    assert np.array_equal(stacked, tokens.transpose(1, 0, 2, 3).reshape(layers, -1, width))
    # Layer 1, prompt 2's third patch: row 1 * patches + 2 of layer 1.
    assert np.array_equal(stacked[1, patches + 2], tokens[1, 1, 2])


def test_stack_prompts_on_torch_with_and_without_a_batch_axis() -> None:
    batch, shots, layers, patches, width = 2, 3, 2, 4, 5
    tokens = torch.randn(
        batch, shots, layers, patches, width, generator=torch.Generator().manual_seed(0)
    )
    stacked = stack_prompts(tokens)
    assert isinstance(stacked, torch.Tensor)
    old = tokens.transpose(1, 2).reshape(batch, layers, shots * patches, width)
    assert torch.equal(stacked, old)
    one = stack_prompts(tokens[1])
    assert torch.equal(one, tokens[1].transpose(0, 1).reshape(layers, -1, width))
    assert torch.equal(one, stacked[1])


def test_choose_prompts_is_the_generators_sample() -> None:
    items = [f"good_{i}.png" for i in range(10)]
    assert choose_prompts(items, 3, random.Random(5)) == random.Random(5).sample(items, 3)
    first = choose_prompts(items, 3, prompt_generator(1, "candle"))
    assert first == choose_prompts(items, 3, prompt_generator(1, "candle"))
    assert len(set(first)) == 3 and set(first) <= set(items)
    assert first != choose_prompts(items, 3, prompt_generator(2, "candle"))
    assert first == random.Random("1/candle").sample(items, 3)  # evaluation's draw, kept


def test_choose_prompts_advances_a_shared_generator() -> None:
    rng, again = random.Random(0), random.Random(0)
    draws = [choose_prompts(range(20), 2, rng) for _ in range(3)]
    assert draws == [again.sample(range(20), 2) for _ in range(3)]
    assert rng.getstate() == again.getstate()


@pytest.mark.parametrize("k", [0, 4])
def test_choose_prompts_refuses_impossible_counts(k: int) -> None:
    with pytest.raises(InputError, match=f"cannot draw {k} prompts from 3"):
        choose_prompts(["a", "b", "c"], k, random.Random(0))


def test_list_images_keeps_image_suffixes_in_name_order(tmp_path) -> None:
    names = ["b.PNG", "a.jpg", "c.jpeg", "d.npy", "e.TIFF", "f.webp", "g.bmp", "h.tif"]
    for name in [*names, "notes.txt", "mask.png.json", "README"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()  # a folder is no image, whatever its name
    (tmp_path / "sub.png" / "inner.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == sorted(names)
    assert all(p.suffix.lower() in IMAGE_SUFFIXES for p in list_images(tmp_path))
    assert list_images(tmp_path / "missing") == []
    assert list_images(tmp_path / "a.jpg") == []
