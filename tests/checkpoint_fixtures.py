"""Shared pieces of the checkpoint tests: seeded tiny models with perturbed weights, images,
scoring helpers and the files the tests load (authors' layout, CLIP weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inctrl import InCTRL, Scores, get_config
from inctrl.checkpoint import is_head_key, ours_to_authors

TINY = get_config("tiny")
FULL = "ViT-B-16-plus-240"
CATEGORY = "candle"
# The authors' training code saves this around the state dict (pyslowfast-style checkpoint).
AUTHORS_CFG = "TRAIN:\n  BATCH_SIZE: 16\nSHOT: 2\n"


def random_images(seed: int, count: int) -> list[np.ndarray]:
    """``count`` seeded uint8 images, some not square, so preprocessing resizes and crops."""
    rng = np.random.default_rng(seed)
    shapes = [(240, 240, 3), (260, 300, 3), (320, 250, 3)]
    return [rng.integers(0, 256, shapes[i % 3], dtype=np.uint8) for i in range(count)]


def scores_of(
    model: InCTRL, prompts: list[np.ndarray], queries: list[np.ndarray], category: str = CATEGORY
) -> Scores:
    return model.score(queries, model.reference(prompts), model.text_prior(category))


def assert_same_scores(got: Scores, want: Scores) -> None:
    for name, a, b in zip(Scores._fields, got, want, strict=True):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= 1e-7, f"{name}: {a} != {b}"


def assert_same_state(got: InCTRL, want: InCTRL, unused: frozenset[str] = frozenset()) -> None:
    """Equal tensors under every key, except ``unused`` ones a checkpoint need not hold."""
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for key, value in want_state.items():
        if key not in unused:
            assert torch.equal(got_state[key], value), key


@torch.no_grad()
def randomize_heads(model: InCTRL, seed: int) -> None:
    """Fill the adapter's and heads' weights and batch-norm statistics with seeded values."""
    gen = torch.Generator().manual_seed(seed)
    for key, tensor in model.state_dict().items():
        if not is_head_key(key):
            continue
        if key.endswith("num_batches_tracked"):
            tensor.fill_(int(torch.randint(1, 1000, (), generator=gen)))
        elif key.endswith("running_var"):
            tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
        else:
            scale = tensor.shape[-1] ** -0.5 if tensor.dim() == 2 else 0.3
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * scale)


@torch.no_grad()
def perturb_backbone(model: InCTRL, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for param in model.clip.parameters():
        param.add_(0.02 * torch.randn(param.shape, generator=gen))


def authors_layout(model: InCTRL, wrap: str) -> object:
    """What the authors' training code would have saved for ``model``."""
    state = ours_to_authors(model.state_dict())
    if wrap == "ddp":
        return {"epoch": 9, "model_state": {f"module.{k}": v for k, v in state.items()}}
    if wrap == "model_state":
        return {"epoch": 9, "model_state": state, "cfg": AUTHORS_CFG}
    return state


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def images() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two prompt images and three queries."""
    return random_images(1, 2), random_images(2, 3)


@pytest.fixture(scope="module")
def tiny() -> InCTRL:
    model = InCTRL(TINY)
    perturb_backbone(model, seed=10)
    randomize_heads(model, seed=11)
    return model


@pytest.fixture(scope="module")
def tiny_scores(tiny, images) -> Scores:
    return scores_of(tiny, *images)


@pytest.fixture(scope="module")
def authors_file(tmp_path_factory, tiny) -> Path:
    path = tmp_path_factory.mktemp("authors") / "inctrl_tiny.pyth"
    torch.save(authors_layout(tiny, "model_state"), path)
    return path


@pytest.fixture(scope="module", params=["pt", "safetensors"])
def clip_file(request, tmp_path_factory, tiny) -> Path:
    """The tiny model's (perturbed) backbone as an open_clip weights file."""
    path = tmp_path_factory.mktemp("clip") / f"tiny_clip.{request.param}"
    state = {k: v.contiguous() for k, v in tiny.clip.state_dict().items()}
    if request.param == "pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return path
