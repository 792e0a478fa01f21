"""Few-shot state values: safetensors round trips, clear load errors, atomic saves, digests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image

import inctrl.state
from inctrl import InCTRL, InputError, ReferenceBank, TextPrior, get_config

from helpers import random_images

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def unperturbed() -> InCTRL:
    torch.manual_seed(0)
    return InCTRL(get_config("tiny"))


@pytest.fixture(scope="module")
def prompt_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three seeded random normal images as PNG files, one with a non-ASCII name."""
    folder = tmp_path_factory.mktemp("prompts")
    paths = [folder / "good 1.png", folder / "good_ü_2.png", folder / "good_3.png"]
    sizes = [(260 - 10 * index, 200 + 20 * index) for index in range(3)]
    for path, pixels in zip(paths, random_images(3, seed=0, size=sizes), strict=True):
        Image.fromarray(pixels).save(path)
    return paths


@pytest.fixture(scope="module")
def bank(unperturbed: InCTRL, prompt_paths: list[Path]) -> ReferenceBank:
    return unperturbed.reference(prompt_paths)


@pytest.fixture(scope="module")
def prior(unperturbed: InCTRL) -> TextPrior:
    return unperturbed.text_prior("candle")


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def assert_banks_equal(loaded: ReferenceBank, original: ReferenceBank) -> None:
    assert torch.equal(loaded.patches, original.patches)
    assert torch.equal(loaded.adapted_mean, original.adapted_mean)
    assert loaded.shots == original.shots
    assert loaded.sources == original.sources
    assert loaded.digests == original.digests


# ------------------------------------------------------------------------ round trips
def test_reference_bank_round_trip(bank: ReferenceBank, prompt_paths, tmp_path: Path) -> None:
    assert bank.shots == 3
    assert bank.sources == tuple(str(p) for p in prompt_paths)
    assert len(bank.digests) == 3
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    loaded = ReferenceBank.load(path)
    assert loaded.patches.dtype == torch.float32
    assert loaded.patches.shape == bank.patches.shape
    assert isinstance(loaded.shots, int)
    assert isinstance(loaded.sources, tuple)
    assert isinstance(loaded.digests, tuple)
    assert_banks_equal(loaded, bank)


def test_text_prior_round_trip(prior: TextPrior, tmp_path: Path) -> None:
    path = tmp_path / "prior.safetensors"
    prior.save(str(path))
    loaded = TextPrior.load(str(path))
    assert loaded.category == "candle"
    assert torch.equal(loaded.normal, prior.normal)
    assert torch.equal(loaded.anomaly, prior.anomaly)
    assert torch.equal(loaded.matrix(), prior.matrix())
    assert not torch.equal(loaded.normal, loaded.anomaly)


def test_save_creates_missing_folders(prior: TextPrior, tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "prior.safetensors"
    prior.save(path)
    assert torch.equal(TextPrior.load(path).normal, prior.normal)


# ------------------------------------------------------------------------ load errors
def test_text_prior_loaded_as_bank(prior: TextPrior, tmp_path: Path) -> None:
    path = tmp_path / "prior.safetensors"
    prior.save(path)
    with pytest.raises(InputError) as info:
        ReferenceBank.load(path)
    message = str(info.value)
    assert str(path) in message
    assert "reference_bank" in message
    assert "text_prior" in message  # what the file says it is


def test_bank_loaded_as_text_prior(bank: ReferenceBank, tmp_path: Path) -> None:
    path = tmp_path / "bank.safetensors"
    bank.save(path)
    with pytest.raises(InputError) as info:
        TextPrior.load(path)
    assert str(path) in str(info.value)
    assert "text_prior" in str(info.value)


def test_foreign_safetensors_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(2, 2)}, str(path))
    for cls in (ReferenceBank, TextPrior):
        with pytest.raises(InputError) as info:
            cls.load(path)
        assert str(path) in str(info.value)


def test_right_kind_but_missing_tensors(tmp_path: Path) -> None:
    # A file that claims to be a bank but lacks its tensors is a bad input, not a KeyError.
    path = tmp_path / "bank.safetensors"
    metadata = {"kind": "inctrl.reference_bank", "shots": "1"}
    safetensors.torch.save_file({"other": torch.zeros(2)}, str(path), metadata=metadata)
    with pytest.raises(InputError) as info:
        ReferenceBank.load(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "content",
    [b"", b"plain text, not tensors\n" * 4, np.random.default_rng(1).bytes(4096)],
    ids=["empty", "text", "random"],
)
def test_not_a_safetensors_file(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "state.safetensors"
    path.write_bytes(content)
    for cls in (ReferenceBank, TextPrior):
        with pytest.raises(InputError) as info:
            cls.load(path)
        message = str(info.value)
        assert str(path) in message
        assert "safetensors" in message
        assert "\n" not in message


def test_image_file_is_not_state(prompt_paths: list[Path]) -> None:
    with pytest.raises(InputError) as info:
        ReferenceBank.load(prompt_paths[0])
    assert str(prompt_paths[0]) in str(info.value)


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "bank.safetensors"
    for cls in (ReferenceBank, TextPrior):
        with pytest.raises(InputError, match="no such file") as info:
            cls.load(path)
        assert str(path) in str(info.value)
    with pytest.raises(InputError):
        ReferenceBank.load(tmp_path)  # a folder is not a file


# ------------------------------------------------------------------------ atomic writes
def test_save_leaves_only_the_target(bank: ReferenceBank, prior: TextPrior, tmp_path: Path) -> None:
    bank.save(tmp_path / "bank.safetensors")
    assert files_in(tmp_path) == ["bank.safetensors"]
    prior.save(tmp_path / "prior.safetensors")
    assert files_in(tmp_path) == ["bank.safetensors", "prior.safetensors"]


def test_overwrite_replaces_the_file(prior: TextPrior, tmp_path: Path) -> None:
    path = tmp_path / "prior.safetensors"
    TextPrior("old", -prior.normal, -prior.anomaly).save(path)
    prior.save(path)
    assert files_in(tmp_path) == ["prior.safetensors"]
    loaded = TextPrior.load(path)
    assert loaded.category == "candle"
    assert torch.equal(loaded.normal, prior.normal)


def _break_save_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the safetensors writer start a file, then fail, as a full disk would."""

    def failing_save_file(tensors, filename, metadata=None) -> None:
        Path(filename).write_bytes(b"partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", failing_save_file)
    if hasattr(inctrl.state, "save_file"):
        monkeypatch.setattr(inctrl.state, "save_file", failing_save_file)


@pytest.mark.parametrize("which", ["bank", "prior"])
def test_failing_save_leaves_nothing(
    which: str, bank, prior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    value = bank if which == "bank" else prior
    _break_save_file(monkeypatch)
    with pytest.raises(OSError, match="No space left"):
        value.save(tmp_path / "state.safetensors")
    assert files_in(tmp_path) == []


def test_failing_save_keeps_the_old_file(
    prior: TextPrior, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "prior.safetensors"
    prior.save(path)
    before = path.read_bytes()
    _break_save_file(monkeypatch)
    with pytest.raises(OSError):
        TextPrior("other", prior.anomaly, prior.normal).save(path)
    assert files_in(tmp_path) == ["prior.safetensors"]
    assert path.read_bytes() == before


# ------------------------------------------------------------------------ digests
def test_digests_do_not_depend_on_the_source_type(
    unperturbed: InCTRL, bank: ReferenceBank, prompt_paths: list[Path]
) -> None:
    images = [Image.open(p) for p in prompt_paths]
    arrays = [np.asarray(Image.open(p)) for p in prompt_paths]
    from_images = unperturbed.reference(images)
    from_arrays = unperturbed.reference(arrays)
    assert from_images.digests == bank.digests
    assert from_arrays.digests == bank.digests
    assert torch.equal(from_images.patches, bank.patches)
    assert from_images.sources != bank.sources  # provenance still says where each came from
    assert len(set(bank.digests)) == 3  # different images, different digests


def test_digest_of_an_image_does_not_depend_on_its_batch(
    unperturbed: InCTRL, bank: ReferenceBank, prompt_paths: list[Path]
) -> None:
    alone = unperturbed.reference([prompt_paths[1]])
    assert alone.digests == (bank.digests[1],)
    reordered = unperturbed.reference([prompt_paths[2], prompt_paths[0]])
    assert reordered.digests == (bank.digests[2], bank.digests[0])
