"""Evaluation on given prompts and the calibration they leave: the authors' prompt files (round
trip, exact use, refusals) and the operating points, each run calibrated on train/good less its
prompts."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from inctrl import InputError
from inctrl.data import load_samples
from inctrl.evaluation import evaluate, operating_points
from inctrl.evaluation_report import MeanStd
from inctrl.prompt_files import read_prompt_file, write_prompt_file
from inctrl.synth import synthesize
from inctrl_runtime.decisions import TARGET_FPRS, TIE_TOLERANCE, min_normals, threshold

from helpers import CATEGORIES, POOL_IMAGES


# -------------------------------------------------------------------- authors' prompt files
@pytest.mark.unit
def test_prompt_files_round_trip_and_are_used_exactly(model, samples, tmp_path) -> None:
    prompts = {}
    for index, category in enumerate(CATEGORIES):
        # The other category's images: a set no draw could produce.
        other = [s.image_path for s in samples if s.category == CATEGORIES[1 - index]][:2]
        prompts[category] = model.pixels(other).cpu()
        write_prompt_file(tmp_path / f"{category}.pt", prompts[category])
        stored = torch.load(tmp_path / f"{category}.pt", weights_only=True)
        assert isinstance(stored, list) and len(stored) == 2  # the authors' layout
        assert all(t.shape == (3, 240, 240) for t in stored)
        assert torch.equal(read_prompt_file(tmp_path / f"{category}.pt"), prompts[category])
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{c}.pt" for c in CATEGORIES]

    result = evaluate(model, samples, shots=2, prompts_dir=tmp_path)
    assert result.settings.seeds is None and result.settings.prompts == str(tmp_path)
    for category in result.categories:
        (run,) = category.runs
        assert run.seed is None
        with torch.no_grad():
            expected = model.head(
                model.encode(model.pixels(list(category.images))),
                model.reference(prompts[category.category]),
                model.text_prior(category.category),
            ).score
        assert torch.allclose(
            torch.tensor(run.scores, dtype=torch.float64), expected.double(), atol=1e-6
        )


@pytest.mark.unit
def test_bad_prompt_files_are_refused(tmp_path) -> None:
    (tmp_path / "garbage.pt").write_bytes(b"\x00 not torch" * 8)
    torch.save([torch.zeros(3, 64, 64)], tmp_path / "small.pt")
    torch.save({"a": torch.zeros(3, 240, 240)}, tmp_path / "dict.pt")
    for name, message in [
        ("missing.pt", "no such few-shot prompt file"),
        ("garbage.pt", "not a readable torch file"),
        ("small.pt", "shape (3, 64, 64)"),
        ("dict.pt", "expected a non-empty list"),
    ]:
        with pytest.raises(InputError, match=re.escape(message)):
            read_prompt_file(tmp_path / name)


# ------------------------------------------------------------------------- operating points
@pytest.mark.unit
def test_operating_points_on_hand_made_scores() -> None:
    calibration = [0.1 * i for i in range(19, 0, -1)]  # n = 19, any order: 0.01 needs 99
    # Thresholds: at 0.1 the ceil(20 * 0.9) = 18th smallest, 1.8; at 0.05 the 19th, 1.9.
    # A score equal to the threshold is not flagged: its p-value is (1 + 2) / 20 > 0.1.
    targets = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.5, 1.85, 1.95, 1.8, 1.85, 2.5, 1.0]
    at_01, at_05, at_10 = operating_points(calibration, targets, scores)
    assert at_01 == (0.01, *[None] * 6)  # without map maxima, no region threshold either
    assert at_05.threshold == pytest.approx(1.9 + TIE_TOLERANCE)
    assert (at_05.false_positive_rate, at_05.recall) == (1 / 4, 1 / 3)  # 1.95; 2.5
    assert at_10.threshold == pytest.approx(1.8 + TIE_TOLERANCE)
    assert (at_10.false_positive_rate, at_10.recall) == (2 / 4, 2 / 3)  # 1.85, 1.95; 1.85, 2.5
    assert [p.target_fpr for p in operating_points([], targets, scores)] == list(TARGET_FPRS)
    assert all(p.threshold is None for p in operating_points([], targets, scores))


@pytest.fixture(scope="module")
def pool_of_20(eval_dir, model):
    """One category with 20 train/good images: each run (k = 2) calibrates on 18, enough for
    a false-positive rate of 0.1, too few for 0.05 (19) and 0.01 (99)."""
    root = eval_dir / "pool20"
    synthesize(root, 3, categories=1, images_per_category=20, size=64)
    samples = load_samples([root])
    return samples, evaluate(model, samples, shots=2, seeds=(0, 1, 2), pixel=False)


@pytest.mark.unit
def test_each_run_is_calibrated_on_train_good_less_its_prompts(model, pool_of_20) -> None:
    samples, report = pool_of_20
    (category,) = report.categories
    pool = sorted(s.image_path for s in samples if s.split == "train")
    targets = np.asarray(category.targets)
    prior = model.text_prior(category.category)
    for run in category.runs:
        rest = [path for path in pool if path not in run.prompts]
        assert run.calibration == len(rest) == 18
        with torch.no_grad():
            normals = model.score(rest, model.reference(list(run.prompts)), prior).score
        normals = np.sort(normals.numpy())
        scores = np.asarray(run.scores)
        for point in run.operating_points:
            cut = threshold(normals, point.target_fpr)
            if min_normals(point.target_fpr) > 18:
                assert cut is None and point == (point.target_fpr, *[None] * 6)
                continue
            assert point.threshold == pytest.approx(cut, abs=1e-5)
            # The region threshold is measured without masks (pixel=False), not what it touches.
            assert point.region_threshold is not None and point.region_recall is None
            assert point.false_positive_rate == np.mean(scores[targets == 0] > cut)
            assert point.recall == np.mean(scores[targets == 1] > cut)
    at_01, at_05, at_10 = category.operating_points
    assert at_01.false_positive_rate is None and at_05.recall is None
    assert at_10.recall == MeanStd.of(run.operating_points[2].recall for run in category.runs)
    assert at_10.recall.mean > 0  # the test anomalies are not all below the threshold
    data = report.to_dict()["categories"][0]
    assert (
        data["calibration"] == 18
        and data["operating_points"][2]["recall"] == at_10.recall._asdict()
    )
    assert (
        data["runs"][0]["operating_points"][2]["threshold"]
        == category.runs[0].operating_points[2].threshold
    )
    assert report.operating_points == category.operating_points  # one category: its mean


@pytest.mark.unit
def test_prompt_file_runs_calibrate_without_the_files_images(model, samples, tmp_path) -> None:
    for index, category in enumerate(CATEGORIES):
        train = [s.image_path for s in samples if s.split == "train"]
        own = [path for path in train if f"/{category}/" in path][:2]
        other = [path for path in train if f"/{CATEGORIES[1 - index]}/" in path][:2]
        write_prompt_file(tmp_path / "own" / f"{category}.pt", model.pixels(own).cpu())
        write_prompt_file(tmp_path / "other" / f"{category}.pt", model.pixels(other).cpu())
    own = evaluate(model, samples, shots=2, prompts_dir=tmp_path / "own", pixel=False)
    other = evaluate(model, samples, shots=2, prompts_dir=tmp_path / "other", pixel=False)
    # The file holds pixels, not paths: its train/good images are found by pixel digest.
    assert [c.calibration for c in own.categories] == [POOL_IMAGES - 2] * len(CATEGORIES)
    assert [c.calibration for c in other.categories] == [POOL_IMAGES] * len(CATEGORIES)
    # No draws, so no coverage selection to set beside them.
    assert all(c.selected is None for c in own.categories) and own.selection is None
    assert own.to_dict()["mean"]["selection"] is None and own.selection_rows() == []
    assert "Prompt choice" not in own.to_markdown() and "Operating points" in own.to_markdown()
