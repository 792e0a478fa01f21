"""Checkpoints: the authors' layout, our safetensors format, CLIP weights, hostile files.

Every load is checked by scoring: the loaded model must give the original model's scores on
seeded random images. The tiny models have random (seeded) head weights and batch-norm
statistics and a perturbed backbone, so a part that is not loaded changes the scores.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inctrl import InCTRL, InputError, get_config
from inctrl.checkpoint import OPTIONAL_KEYS, is_head_key, ours_to_authors

from helpers import FULL, TINY, assert_same_scores, assert_same_state, authors_layout, scores_of

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------- the authors' key layout
def test_authors_layout_of_full_architecture_has_345_keys():
    with torch.device("meta"):
        model = InCTRL(get_config(FULL))
    state = ours_to_authors(model.state_dict())
    assert len(state) == 345
    assert "logit_scale" not in state
    assert not any(k.startswith(("clip.", "module.")) for k in state)
    expected_shapes = {
        "visual.conv1.weight": (896, 3, 16, 16),
        "visual.proj": (896, 640),
        "positional_embedding": (77, 640),
        "token_embedding.weight": (49408, 640),
        "text_projection": (640, 640),
        "adapter.fc.0.weight": (160, 640),
        "adapter.fc.2.weight": (640, 160),
        "diff_head.projection1.weight": (128, 225),
        "diff_head.bn1.running_mean": (225,),
        "diff_head_ref.projection1.weight": (128, 640),
        "diff_head_ref.projection3.weight": (1, 64),
        "diff_head_ref.bn3.running_var": (64,),
    }
    for key, shape in expected_shapes.items():
        assert tuple(state[key].shape) == shape, key
    heads = [k for k in state if is_head_key(k)]
    # adapter: 2 weights; each head: 3 linear layers x 2 + 3 batch norms x 5.
    assert len(heads) == 2 + 2 * (3 * 2 + 3 * 5)


def test_perturbed_tiny_model_depends_on_every_part(tiny, tiny_scores, prompts_and_queries):
    """Sanity of the fixtures: scores are not saturated, and a model that lacks the perturbed
    backbone or the randomized heads scores differently, so the load tests can fail."""
    for name in ("score", "holistic_score", "image_residual_score"):
        values = getattr(tiny_scores, name)
        assert torch.all((values > 1e-4) & (values < 1 - 1e-4)), name
    assert len(set(tiny_scores.score.tolist())) == 3
    fresh_heads = InCTRL(TINY)
    fresh_heads.clip.load_state_dict(tiny.clip.state_dict())
    other = scores_of(fresh_heads, *prompts_and_queries)
    assert torch.equal(other.patch_residual_map, tiny_scores.patch_residual_map)
    for name in ("score", "holistic_score", "image_residual_score"):
        assert not torch.allclose(getattr(other, name), getattr(tiny_scores, name)), name
    fresh_backbone = InCTRL(TINY)
    fresh_backbone.load_state_dict(
        {k: v for k, v in tiny.state_dict().items() if is_head_key(k)}, strict=False
    )
    other = scores_of(fresh_backbone, *prompts_and_queries)
    for name in ("score", "patch_residual_map", "text_score"):
        assert not torch.allclose(getattr(other, name), getattr(tiny_scores, name)), name


@pytest.mark.parametrize("wrap", ["model_state", "bare", "ddp"])
def test_authors_checkpoint_loads_exactly(tmp_path, tiny, tiny_scores, prompts_and_queries, wrap):
    path = tmp_path / "checkpoint_epoch_00010.pyth"
    torch.save(authors_layout(tiny, wrap), path)
    loaded = InCTRL.from_checkpoint(path)
    assert loaded.config == TINY
    assert loaded.backbone_origin == "included"
    assert not loaded.training
    # The authors' files lack CLIP's logit_scale, which InCTRL never uses.
    assert_same_state(loaded, tiny, unused=OPTIONAL_KEYS)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)


# Each case: (what is wrong, how to break the authors' state dict, the key the message names).
BROKEN = {
    "missing head key": (
        lambda sd: sd.pop("diff_head.bn2.running_var"),
        "diff_head.bn2.running_var",
    ),
    "missing backbone key": (lambda sd: sd.pop("visual.ln_post.weight"), "visual.ln_post.weight"),
    "extra key": (
        lambda sd: sd.update({"diff_head_ref.projection4.weight": torch.zeros(1, 64)}),
        "diff_head_ref.projection4.weight",
    ),
    "wrong shape": (
        lambda sd: sd.update({"adapter.fc.0.weight": torch.zeros(7, 32)}),
        "adapter.fc.0.weight",
    ),
    "wrong backbone shape": (
        lambda sd: sd.update({"transformer.resblocks.1.mlp.c_fc.weight": torch.zeros(100, 32)}),
        "transformer.resblocks.1.mlp.c_fc.weight",
    ),
    # The tensor the preset is inferred from: width 64 is the tiny preset's, patch 14 is none's.
    "wrong patch size": (
        lambda sd: sd.update({"visual.conv1.weight": torch.zeros(64, 3, 14, 14)}),
        "visual.conv1.weight",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_authors_checkpoint_that_does_not_fit_names_key_and_file(tmp_path, tiny, case):
    breaker, key = BROKEN[case]
    state = ours_to_authors(tiny.state_dict())
    breaker(state)
    path = tmp_path / "broken.pyth"
    torch.save({"model_state": state}, path)
    with pytest.raises(InputError) as info:
        InCTRL.from_checkpoint(path)
    message = str(info.value)
    assert key in message
    assert str(path) in message
    assert "\n" not in message


# ----------------------------------------------------------------------- hostile, malformed
class MkdirOnUnpickle:
    """Unpickling this object calls ``os.mkdir(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickle_payload_is_never_executed(tmp_path, tiny):
    state = ours_to_authors(tiny.state_dict())
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pyth"
    torch.save({"model_state": {**state, "payload": MkdirOnUnpickle(marker)}}, path)
    assert not marker.exists()  # saving does not run it

    with pytest.raises(InputError) as info:
        InCTRL.from_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError):
        InCTRL.from_clip_weights(path, preset="tiny")
    clip = tmp_path / "clip.pt"
    torch.save(tiny.clip.state_dict(), clip)
    with pytest.raises(InputError):
        InCTRL.from_clip_weights(clip, heads=path, preset="tiny")
    assert not marker.exists()

    # The payload is live: an unrestricted unpickler does run it.
    control = tmp_path / "control"
    torch.save({"payload": MkdirOnUnpickle(control)}, tmp_path / "control.pt")
    torch.load(tmp_path / "control.pt", weights_only=False)
    assert control.is_dir()


def write_garbage(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def write_text(path: Path) -> None:
    path.write_text("model_state: this is a YAML file, not a checkpoint\n" * 20)


def write_empty(path: Path) -> None:
    path.write_bytes(b"")


def write_truncated_pickle(path: Path) -> None:
    torch.save({"model_state": {"w": torch.arange(10_000.0)}}, path)
    path.write_bytes(path.read_bytes()[:20_000])


def write_truncated_safetensors(path: Path) -> None:
    save_file({"w": torch.arange(10_000.0)}, str(path))
    path.write_bytes(path.read_bytes()[:20_000])


def write_list_of_ints(path: Path) -> None:
    torch.save([1, 2, 3], path)


def write_dict_of_strings(path: Path) -> None:
    torch.save({"model_state": {"visual.conv1.weight": "not a tensor"}}, path)


@pytest.mark.parametrize(
    "write",
    [
        write_garbage,
        write_text,
        write_empty,
        write_truncated_pickle,
        write_truncated_safetensors,
        write_list_of_ints,
        write_dict_of_strings,
    ],
    ids=lambda f: f.__name__.removeprefix("write_"),
)
def test_unreadable_file_gives_input_error(tmp_path, write):
    path = tmp_path / "model.pyth"
    write(path)
    with pytest.raises(InputError) as info:
        InCTRL.from_checkpoint(path)
    assert str(path) in str(info.value)
    with pytest.raises(InputError) as info:
        InCTRL.from_clip_weights(path, preset="tiny")
    assert str(path) in str(info.value)


def test_missing_file_gives_input_error(tmp_path):
    path = tmp_path / "nowhere.pyth"
    with pytest.raises(InputError, match="nowhere.pyth"):
        InCTRL.from_checkpoint(path)
