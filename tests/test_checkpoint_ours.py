"""Checkpoints in our safetensors format (with and without the backbone, with CLIP weights
files) and the full ViT-B-16-plus-240 architecture in the authors' layout."""

from __future__ import annotations

import dataclasses
import gc
import json

import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inctrl import InCTRL, InputError, get_config
from inctrl.checkpoint import CHECKPOINT_KIND, FORMAT_VERSION, HEAD_PREFIX, is_head_key
from inctrl.files import read_safetensors
from inctrl_runtime.files import file_sha256

from helpers import (
    FULL,
    TINY,
    VARIED_SIZES,
    assert_same_scores,
    assert_same_state,
    authors_layout,
    perturb_heads,
    random_images,
    scores_of,
)


# ------------------------------------------------------------------ our safetensors format
@pytest.mark.unit
def test_our_checkpoint_round_trip_includes_backbone(
    tmp_path, tiny, tiny_scores, prompts_and_queries
):
    path = tmp_path / "tiny.safetensors"
    tiny.save(path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["backbone"] == "included"
        assert set(handle.keys()) == set(tiny.state_dict())
    loaded = InCTRL.from_checkpoint(path)
    assert loaded.config == TINY
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)


@pytest.mark.unit
def test_heads_only_checkpoint_needs_its_clip_weights(tmp_path, clip_file, prompts_and_queries):
    model = InCTRL.from_clip_weights(clip_file, preset="tiny")
    assert model.backbone_origin == f"file:{file_sha256(clip_file)}"
    perturb_heads(model, seed=21)
    want = scores_of(model, *prompts_and_queries)

    path = tmp_path / "heads.safetensors"
    model.save(path)
    with safe_open(str(path), framework="pt") as handle:
        keys = set(handle.keys())
        assert handle.metadata()["backbone"] == model.backbone_origin
    assert not any(k.startswith("clip.") for k in keys)
    assert keys == {k for k in model.state_dict() if is_head_key(k)}

    with pytest.raises(InputError) as info:
        InCTRL.from_checkpoint(path)
    assert "--clip-weights" in str(info.value)
    assert str(path) in str(info.value)

    loaded = InCTRL.from_checkpoint(path, clip_weights=clip_file)
    assert_same_state(loaded, model)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), want)


@pytest.mark.unit
def test_from_clip_weights_with_authors_heads(
    clip_file, authors_file, tiny, tiny_scores, prompts_and_queries
):
    loaded = InCTRL.from_clip_weights(clip_file, heads=authors_file, preset="tiny")
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)


@pytest.mark.unit
def test_from_clip_weights_with_our_heads_file(
    tmp_path, clip_file, tiny, tiny_scores, prompts_and_queries
):
    heads = tmp_path / "heads.safetensors"
    tiny.save(heads, include_backbone=False)
    loaded = InCTRL.from_clip_weights(clip_file, heads=heads, preset="tiny")
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)


def save_format_1(path, model: InCTRL, include_backbone: bool = True) -> None:
    """What our format 1 wrote: the head's keys as the authors' (``adapter.*``, ...)."""
    state = {k.removeprefix(HEAD_PREFIX): v for k, v in model.state_dict().items()}
    if not include_backbone:
        state = {k: v for k, v in state.items() if is_head_key(k)}
    metadata = {
        "kind": CHECKPOINT_KIND,
        "format_version": "1",
        "config": json.dumps(model.config.to_dict()),
        "backbone": "included" if include_backbone else model.backbone_origin,
    }
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)


@pytest.mark.unit
def test_format_1_checkpoint_loads_and_scores_identically(
    tmp_path, tiny, tiny_scores, prompts_and_queries
):
    path = tmp_path / "tiny_format_1.safetensors"
    save_format_1(path, tiny)
    with safe_open(str(path), framework="pt") as handle:
        assert "adapter.fc.0.weight" in handle.keys()  # noqa: SIM118
    loaded = InCTRL.from_checkpoint(path)
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)
    again = tmp_path / "tiny_again.safetensors"
    loaded.save(again)  # written in the current format
    with safe_open(str(again), framework="pt") as handle:
        assert handle.metadata()["format_version"] == FORMAT_VERSION != "1"
        assert set(handle.keys()) == set(tiny.state_dict())
    assert_same_scores(scores_of(InCTRL.from_checkpoint(again), *prompts_and_queries), tiny_scores)


@pytest.mark.unit
def test_format_1_heads_file_loads_with_clip_weights(
    tmp_path, clip_file, tiny, tiny_scores, prompts_and_queries
):
    model = InCTRL.from_clip_weights(clip_file, preset="tiny")
    model.inctrl_head.load_state_dict(tiny.inctrl_head.state_dict())
    path = tmp_path / "heads_format_1.safetensors"
    save_format_1(path, model, include_backbone=False)
    for loaded in (
        InCTRL.from_checkpoint(path, clip_weights=clip_file),
        InCTRL.from_clip_weights(clip_file, heads=path, preset="tiny"),
    ):
        assert_same_state(loaded, tiny)
        assert_same_scores(scores_of(loaded, *prompts_and_queries), tiny_scores)


@pytest.mark.unit
def test_checkpoint_of_an_unknown_format_is_refused_in_one_line(tmp_path, tiny):
    path = tmp_path / "future.safetensors"
    tiny.save(path)
    tensors, metadata = read_safetensors(path)
    save_file(tensors, str(path), metadata={**metadata, "format_version": "99"})
    with pytest.raises(InputError, match="checkpoint format 99") as info:
        InCTRL.from_checkpoint(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.unit
def test_heads_only_checkpoint_of_unreproducible_backbone_is_refused(tmp_path):
    # A randomly initialized backbone without a seed cannot be rebuilt at load time, so a
    # heads-only checkpoint of it must be refused when written or when read, never load
    # silently onto another random backbone.
    model = InCTRL(dataclasses.replace(TINY, backbone_seed=None))
    path = tmp_path / "heads.safetensors"
    with pytest.raises(InputError):
        model.save(path, include_backbone=False)
        InCTRL.from_checkpoint(path)


@pytest.mark.unit
def test_clip_weights_of_another_architecture_give_readable_error(tmp_path):
    other = open_clip.CLIP(
        32,
        vision_cfg=open_clip.CLIPVisionCfg(
            layers=2, width=48, head_width=16, patch_size=16, image_size=240
        ),
        text_cfg=open_clip.CLIPTextCfg(width=32, heads=2, layers=2),
    )
    path = tmp_path / "other_clip.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(InputError) as info:
        InCTRL.from_clip_weights(path, preset="tiny")
    message = str(info.value)
    assert str(path) in message
    assert "tiny" in message
    assert "missing" in message and "transformer.resblocks.2" in message
    assert "shape mismatch" in message
    assert "\n" not in message


@pytest.mark.unit
def test_inctrl_checkpoint_given_as_clip_weights_gives_readable_error(authors_file):
    with pytest.raises(InputError) as info:
        InCTRL.from_clip_weights(authors_file, preset="tiny")
    message = str(info.value)
    assert str(authors_file) in message
    assert "unexpected" in message and "adapter.fc.0.weight" in message


# ------------------------------------------------------------------------ full architecture
@pytest.mark.slow
def test_full_architecture_authors_checkpoint_loads_exactly(tmp_path):
    torch.manual_seed(0)
    model = InCTRL(get_config(FULL))
    perturb_heads(model, seed=31)
    prompts = random_images(1, seed=3, size=VARIED_SIZES)
    queries = random_images(2, seed=4, size=VARIED_SIZES)
    # "bird" takes the 2-prompt text ensemble: the full text tower on 242 prompts is slow.
    want = scores_of(model, prompts, queries, category="bird")
    path = tmp_path / "inctrl_full_k1.pyth"
    try:
        torch.save(authors_layout(model, "model_state"), path)
        del model
        gc.collect()
        loaded = InCTRL.from_checkpoint(path)
        assert loaded.config == get_config(FULL)
        assert loaded.backbone_origin == "included"
        assert_same_scores(scores_of(loaded, prompts, queries, category="bird"), want)
        del loaded
        gc.collect()
    finally:
        path.unlink(missing_ok=True)  # 830 MB: do not leave it in pytest's kept temp dirs


@pytest.mark.unit
def test_heads_only_checkpoint_refuses_other_clip_weights(tmp_path, clip_file):
    model = InCTRL.from_clip_weights(clip_file, preset="tiny")
    path = tmp_path / "heads.safetensors"
    model.save(path)
    other = tmp_path / "other_clip.pt"
    state = {k: v.clone() for k, v in model.clip.state_dict().items()}
    state["ln_final.bias"] += 0.5
    torch.save(state, other)
    with pytest.raises(InputError, match="not the CLIP weights"):
        InCTRL.from_checkpoint(path, clip_weights=other)
