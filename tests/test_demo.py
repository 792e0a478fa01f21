"""The embedded demo model: shipped, labelled, the default, and better than chance on categories
it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from inctrl import InCTRL
from inctrl.data import load_samples
from inctrl.demo import DEMO_CHECKPOINT, HELD_OUT_CATEGORIES, MAX_DEMO_BYTES, build_demo
from inctrl.evaluation import evaluate

from helpers import run_inctrl, synth_data


@pytest.fixture(scope="module")
def fresh_data(tmp_path_factory) -> Path:
    """Synthetic data from a seed the demo was not built with."""
    return synth_data(tmp_path_factory, seed=11, categories=7, images_per_category=8, size=256)


@pytest.mark.unit
def test_demo_is_shipped_small_and_labelled() -> None:
    assert DEMO_CHECKPOINT.is_file()
    assert DEMO_CHECKPOINT.stat().st_size <= MAX_DEMO_BYTES
    model = InCTRL.from_checkpoint(DEMO_CHECKPOINT)
    assert model.config.name == "demo" and model.config.vision.grid == 15
    record = json.loads(DEMO_CHECKPOINT.with_suffix(".json").read_text())
    assert record["held_out_categories"] == list(HELD_OUT_CATEGORIES)
    assert not set(record["held_out_categories"]) & set(record["train_categories"])
    assert "demo" in record["model"]


@pytest.mark.unit
def test_demo_beats_chance_on_a_held_out_category(fresh_data) -> None:
    model = InCTRL.from_checkpoint(DEMO_CHECKPOINT)
    report = evaluate(model, load_samples([fresh_data / "synth_stripes"]), shots=2, seeds=(0, 1))
    assert report.auroc.mean > 0.75


@pytest.mark.cli
def test_commands_default_to_the_demo_and_say_so(fresh_data, tmp_path) -> None:
    good = sorted((fresh_data / "synth_stripes" / "train" / "good").iterdir())
    scratch = sorted((fresh_data / "synth_stripes" / "test" / "scratch").iterdir())[0]
    result = run_inctrl(
        "score",
        "--category",
        "synth_stripes",
        "-s",
        str(good[0]),
        "-s",
        str(good[1]),
        "--json",
        str(good[2]),
        str(scratch),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "DEMO" in result.stderr
    normal, anomalous = json.loads(result.stdout)
    assert anomalous["score"] > normal["score"]
    evaluated = run_inctrl(
        "evaluate",
        "--data",
        str(fresh_data / "synth_stripes"),
        "--shots",
        "2",
        "--seeds",
        "1",
        "--json",
        "-",
        cwd=tmp_path,
    )
    assert evaluated.returncode == 0, evaluated.stderr
    assert "DEMO" in evaluated.stderr
    assert json.loads(evaluated.stdout)["settings"]["shots"] == 2
    info = run_inctrl("demo", "info", cwd=tmp_path)
    assert info.returncode == 0 and "synth_ring" in info.stdout


@pytest.mark.cli
def test_demo_build_runs_end_to_end(tmp_path) -> None:
    out = tmp_path / "demo.safetensors"
    record = build_demo(tmp_path / "work", out, images_per_category=4, epochs=1, steps_per_epoch=3)
    assert out.is_file() and out.stat().st_size <= MAX_DEMO_BYTES
    assert json.loads(out.with_suffix(".json").read_text())["size_bytes"] == out.stat().st_size
    assert {c["category"] for c in record["held_out"]["categories"]} == set(HELD_OUT_CATEGORIES)
    model = InCTRL.from_checkpoint(out)
    image = Image.open(
        next((tmp_path / "work" / "synth" / "synth_ring" / "train" / "good").iterdir())
    )
    bank = model.reference([image])
    assert model.score([image], bank, model.text_prior("synth_ring")).score.shape == (1,)
