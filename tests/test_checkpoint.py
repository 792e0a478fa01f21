"""Checkpoints: the authors' layout, our safetensors format, CLIP weights, hostile files.

Every load is checked by scoring: the loaded model must give the original model's scores on
seeded random images. The tiny models have random (seeded) head weights and batch-norm
statistics and a perturbed backbone, so a part that is not loaded changes the scores.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from inctrl import InCTRL, InputError, Scores, get_config
from inctrl.checkpoint import OPTIONAL_KEYS, is_head_key, ours_to_authors
from inctrl.files import file_sha256

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


def test_perturbed_tiny_model_depends_on_every_part(tiny, tiny_scores, images):
    """Sanity of the fixtures: scores are not saturated, and a model that lacks the perturbed
    backbone or the randomized heads scores differently, so the load tests can fail."""
    for name in ("score", "holistic_score", "image_residual_score"):
        values = getattr(tiny_scores, name)
        assert torch.all((values > 1e-4) & (values < 1 - 1e-4)), name
    assert len(set(tiny_scores.score.tolist())) == 3
    fresh_heads = InCTRL(TINY)
    fresh_heads.clip.load_state_dict(tiny.clip.state_dict())
    other = scores_of(fresh_heads, *images)
    assert torch.equal(other.patch_residual_map, tiny_scores.patch_residual_map)
    for name in ("score", "holistic_score", "image_residual_score"):
        assert not torch.allclose(getattr(other, name), getattr(tiny_scores, name)), name
    fresh_backbone = InCTRL(TINY)
    fresh_backbone.load_state_dict(
        {k: v for k, v in tiny.state_dict().items() if is_head_key(k)}, strict=False
    )
    other = scores_of(fresh_backbone, *images)
    for name in ("score", "patch_residual_map", "text_score"):
        assert not torch.allclose(getattr(other, name), getattr(tiny_scores, name)), name


@pytest.mark.parametrize("wrap", ["model_state", "bare", "ddp"])
def test_authors_checkpoint_loads_exactly(tmp_path, tiny, tiny_scores, images, wrap):
    path = tmp_path / "checkpoint_epoch_00010.pyth"
    torch.save(authors_layout(tiny, wrap), path)
    loaded = InCTRL.from_checkpoint(path)
    assert loaded.config == TINY
    assert loaded.backbone_origin == "included"
    assert not loaded.training
    # The authors' files lack CLIP's logit_scale, which InCTRL never uses.
    assert_same_state(loaded, tiny, unused=OPTIONAL_KEYS)
    assert_same_scores(scores_of(loaded, *images), tiny_scores)


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


# ------------------------------------------------------------------ our safetensors format
def test_our_checkpoint_round_trip_includes_backbone(tmp_path, tiny, tiny_scores, images):
    path = tmp_path / "tiny.safetensors"
    tiny.save(path)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["backbone"] == "included"
        assert set(handle.keys()) == set(tiny.state_dict())
    loaded = InCTRL.from_checkpoint(path)
    assert loaded.config == TINY
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *images), tiny_scores)


def test_heads_only_checkpoint_needs_its_clip_weights(tmp_path, clip_file, images):
    model = InCTRL.from_clip_weights(clip_file, preset="tiny")
    assert model.backbone_origin == f"file:{file_sha256(clip_file)}"
    randomize_heads(model, seed=21)
    want = scores_of(model, *images)

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
    assert_same_scores(scores_of(loaded, *images), want)


def test_from_clip_weights_with_authors_heads(clip_file, authors_file, tiny, tiny_scores, images):
    loaded = InCTRL.from_clip_weights(clip_file, heads=authors_file, preset="tiny")
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *images), tiny_scores)


def test_from_clip_weights_with_our_heads_file(tmp_path, clip_file, tiny, tiny_scores, images):
    heads = tmp_path / "heads.safetensors"
    tiny.save(heads, include_backbone=False)
    loaded = InCTRL.from_clip_weights(clip_file, heads=heads, preset="tiny")
    assert_same_state(loaded, tiny)
    assert_same_scores(scores_of(loaded, *images), tiny_scores)


def test_heads_only_checkpoint_of_unreproducible_backbone_is_refused(tmp_path):
    # A randomly initialized backbone without a seed cannot be rebuilt at load time, so a
    # heads-only checkpoint of it must be refused when written or when read, never load
    # silently onto another random backbone.
    model = InCTRL(dataclasses.replace(TINY, backbone_seed=None))
    path = tmp_path / "heads.safetensors"
    with pytest.raises(InputError):
        model.save(path, include_backbone=False)
        InCTRL.from_checkpoint(path)


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


def test_inctrl_checkpoint_given_as_clip_weights_gives_readable_error(authors_file):
    with pytest.raises(InputError) as info:
        InCTRL.from_clip_weights(authors_file, preset="tiny")
    message = str(info.value)
    assert str(authors_file) in message
    assert "unexpected" in message and "adapter.fc.0.weight" in message


# ------------------------------------------------------------------------ full architecture
def test_full_architecture_authors_checkpoint_loads_exactly(tmp_path):
    torch.manual_seed(0)
    model = InCTRL(get_config(FULL))
    randomize_heads(model, seed=31)
    prompts, queries = random_images(3, 1), random_images(4, 2)
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
