"""`inctrl prompts make | bank`: the authors' .pt prompt files and our reference banks agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from inctrl import InCTRL, ReferenceBank, get_config
from inctrl.cli.prompts import run_prompts_make
from inctrl.data import load_samples, normal_pool
from inctrl.evaluation import draw_prompts
from inctrl.prompt_files import read_prompt_file
from inctrl.synth import synthesize
from inctrl_runtime.errors import InputError

from helpers import run_inctrl

pytestmark = pytest.mark.cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("prompts")
    synthesize(root / "data", seed=5, categories=1, images_per_category=5, size=64)
    InCTRL(get_config("tiny")).save(root / "tiny.safetensors")
    return root / "data", root / "tiny.safetensors"


def test_make_writes_matching_pt_bank_and_listing(setup, tmp_path) -> None:
    data, checkpoint = setup
    listing = run_prompts_make(data, "synth_fabric", 3, 7, tmp_path, checkpoint)
    pool = normal_pool(load_samples([data]), "synth_fabric")
    assert listing["images"] == [s.image_path for s in draw_prompts(pool, 3, 7, "synth_fabric")]
    model = InCTRL.from_checkpoint(checkpoint)
    pixels = read_prompt_file(tmp_path / "synth_fabric.pt")
    assert torch.equal(pixels, model.pixels(listing["images"]))
    bank = ReferenceBank.load(tmp_path / "synth_fabric.bank.safetensors")
    assert bank.shots == 3
    assert torch.allclose(bank.patches, model.reference(pixels).patches, atol=1e-6)
    assert json.loads((tmp_path / "synth_fabric.prompts.json").read_text()) == listing
    other = run_prompts_make(data, "synth_fabric", 3, 8, tmp_path / "other", checkpoint)
    assert other["images"] != listing["images"]


def test_bank_command_reads_an_authors_prompt_file(setup, tmp_path) -> None:
    data, checkpoint = setup
    run_prompts_make(data, "synth_fabric", 2, 0, tmp_path, checkpoint)
    result = run_inctrl(
        "prompts",
        "bank",
        str(tmp_path / "synth_fabric.pt"),
        "--out",
        str(tmp_path / "from_pt.safetensors"),
        "-c",
        str(checkpoint),
    )
    assert result.returncode == 0, result.stderr
    made = ReferenceBank.load(tmp_path / "synth_fabric.bank.safetensors")
    converted = ReferenceBank.load(tmp_path / "from_pt.safetensors")
    assert torch.equal(made.patches, converted.patches)
    assert made.digests == converted.digests


def test_bad_requests(setup, tmp_path) -> None:
    data, checkpoint = setup
    with pytest.raises(InputError, match="no category 'nope'"):
        run_prompts_make(data, "nope", 2, 0, tmp_path, checkpoint)
    with pytest.raises(InputError, match="fewer than --shots 9"):
        run_prompts_make(data, "synth_fabric", 9, 0, tmp_path, checkpoint)
    result = run_inctrl(
        "prompts",
        "make",
        str(data),
        "--category",
        "synth_fabric",
        "--shots",
        "0",
        "--out",
        str(tmp_path),
        "-c",
        str(checkpoint),
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: --shots must be at least 1, got 0"
