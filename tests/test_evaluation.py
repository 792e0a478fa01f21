"""Evaluation's numbers: metrics against hand computations, one encoder pass per query,
reproducible prompt draws, the coverage-selected run beside them, and pixel AUROC."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from inctrl import InCTRL, InputError
from inctrl.data import index_to_json, load_samples
from inctrl.evaluation import evaluate
from inctrl.metrics import image_metrics, mask_in_model_view, pixel_auroc, pixel_selection
from inctrl_runtime.selection import coverage_selection

from helpers import CATEGORIES, POOL_IMAGES, TEST_IMAGES


def rank_auroc(targets, scores) -> float:
    """Mann-Whitney AUROC: positives' mean rank (ties averaged) against the negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    ranks = np.array([(scores < s).sum() + ((scores == s).sum() + 1) / 2 for s in scores])
    positives, negatives = targets.sum(), (~targets).sum()
    return (ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives)


# ------------------------------------------------------------------------------------ metrics
@pytest.mark.unit
def test_image_metrics_equal_hand_computation() -> None:
    targets = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.35, 0.8, 0.7, 0.2]
    # Pairs (anomalous above normal): 0.35 > 0.1; 0.8 > all three; 0.2 > 0.1 -> 5 of 9.
    # Descending: 0.8+ 0.7- 0.4- 0.35+ 0.2+ 0.1- -> precision at each hit 1/1, 2/4, 3/5.
    auroc, auprc = image_metrics(targets, scores)
    assert auroc == pytest.approx(5 / 9) == rank_auroc(targets, scores)
    assert auprc == pytest.approx((1 + 2 / 4 + 3 / 5) / 3)
    tied = [0.5, 0.2, 0.5, 0.9, 0.2, 0.2]  # ties count one half
    assert image_metrics(targets, tied)[0] == pytest.approx(rank_auroc(targets, tied))
    assert rank_auroc(targets, tied) == pytest.approx((0.5 + 1 + 1 + 3 + 0.5 + 0.5) / 9)


@pytest.mark.unit
def test_report_metrics_are_those_of_its_scores(report) -> None:
    assert [c.category for c in report.categories] == CATEGORIES
    per_run = []
    for category in report.categories:
        assert (category.normal, category.anomalous) == (3, 5)
        assert len(category.images) == len(category.targets) == TEST_IMAGES
        assert [run.seed for run in category.runs] == [0, 1, 2]
        for run in category.runs:
            assert len(run.scores) == TEST_IMAGES
            assert run.auroc == pytest.approx(rank_auroc(category.targets, run.scores))
        aurocs = [run.auroc for run in category.runs]
        assert category.auroc.mean == pytest.approx(statistics.mean(aurocs))
        assert category.auroc.std == pytest.approx(statistics.pstdev(aurocs))
        per_run.append(aurocs)
    # The overall numbers: mean over categories within each run, then mean and std over runs.
    run_means = [statistics.mean(values) for values in zip(*per_run, strict=True)]
    assert report.auroc.mean == pytest.approx(statistics.mean(run_means))
    assert report.auroc.std == pytest.approx(statistics.pstdev(run_means))
    assert report.auprc.mean == pytest.approx(
        statistics.mean(c.auprc.mean for c in report.categories)
    )


# ------------------------------------------------------------------- encoding, prompt draws
@pytest.mark.unit
def test_each_image_is_encoded_once_whatever_the_number_of_seeds(eval_dir, samples) -> None:
    model = InCTRL.from_checkpoint(eval_dir / "tiny.safetensors")
    encode, encoded = model.encode, []

    def counting_encode(pixels):
        encoded.append(len(pixels))
        return encode(pixels)

    model.encode = counting_encode
    for seeds in [(0,), (0, 1, 2, 3, 4)]:
        encoded.clear()
        evaluate(model, samples, shots=2, seeds=seeds, batch_size=3, pixel=False)
        # Every test image and every train/good image once: prompts, calibration images and
        # the coverage selection all come from the train/good features.
        assert sum(encoded) == len(CATEGORIES) * (TEST_IMAGES + POOL_IMAGES)


@pytest.mark.unit
def test_runs_are_reproducible_and_seeds_draw_different_prompts(model, samples, report) -> None:
    again = evaluate(model, samples, shots=2, seeds=(0, 1, 2), checkpoint_name="tiny")
    assert again.to_dict() == report.to_dict()
    for category in report.categories:
        assert len({run.prompts for run in category.runs}) > 1
        assert len({run.scores for run in category.runs}) > 1
        pool = {s.image_path for s in samples if s.category == category.category}
        assert all(p in pool and "/train/good/" in p for r in category.runs for p in r.prompts)
    # A seed's draw depends neither on the sample order nor on the other seeds.
    alone = evaluate(model, samples[::-1], shots=2, seeds=(2,), pixel=False)
    by_name = {c.category: c for c in alone.categories}
    for category in report.categories:
        assert by_name[category.category].runs[0].prompts == category.runs[2].prompts
        assert by_name[category.category].runs[0].auroc == category.runs[2].auroc


# ----------------------------------------------------------------------- coverage selection
@pytest.mark.unit
def test_coverage_selected_run_beside_the_random_draws(model, samples, report) -> None:
    for category in report.categories:
        pool = sorted(
            s.image_path for s in samples if s.category == category.category and s.split == "train"
        )
        with torch.no_grad():
            patches = model.encode(model.pixels(pool)).patches.numpy()
        selected = category.selected
        assert selected.prompts == tuple(pool[i] for i in coverage_selection(patches, 2).indices)
        assert (selected.seed, selected.calibration, selected.operating_points) == (None, None, ())
        with torch.no_grad():
            direct = model.score(
                list(category.images),
                model.reference(list(selected.prompts)),
                model.text_prior(category.category),
            ).score
        assert np.allclose(selected.scores, direct.numpy(), atol=1e-5)
        assert selected.auroc == pytest.approx(rank_auroc(category.targets, selected.scores))
        worst = min(run.auroc for run in category.runs)
        assert category.selection == (selected.auroc, category.auroc, worst)
    # The mean row: the selected AUROC over categories; the draws' per-run means, their worst.
    per_run = [
        statistics.mean(values)
        for values in zip(*[[r.auroc for r in c.runs] for c in report.categories], strict=True)
    ]
    mean = report.selection
    assert mean.selected == pytest.approx(
        statistics.mean(c.selected.auroc for c in report.categories)
    )
    assert mean.random == report.auroc and mean.random_min == pytest.approx(min(per_run))
    data = report.to_dict()
    assert data["mean"]["selection"]["random_auroc"]["min"] == mean.random_min
    assert data["categories"][0]["selected"]["prompts"] == list(
        report.categories[0].selected.prompts
    )


@pytest.mark.unit
def test_no_selection_leaves_the_draws_as_they_are(model, samples, report) -> None:
    """``selection=False`` (``--no-selection``, for large pools) skips the coverage run only."""
    plain = evaluate(model, samples, shots=2, seeds=(0, 1, 2), selection=False)
    for with_it, without in zip(report.categories, plain.categories, strict=True):
        assert without.selected is None and without.selection is None
        assert [r.scores for r in without.runs] == [r.scores for r in with_it.runs]


# --------------------------------------------------------------------------------- pixel AUROC
@pytest.mark.unit
def test_mask_is_brought_into_the_model_view(tmp_path) -> None:
    mask = np.zeros((320, 480), dtype=np.uint8)  # H x W: resized to 240 x 360, crop left 60
    mask[40:120, 200:280] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    Image.fromarray(np.zeros((320, 480, 3), dtype=np.uint8)).save(tmp_path / "image.png")
    view = mask_in_model_view(tmp_path / "mask.png", tmp_path / "image.png")
    assert view.shape == (240, 240) and view.dtype == bool
    rows, cols = np.flatnonzero(view.any(axis=1)), np.flatnonzero(view.any(axis=0))
    # x 200..280 -> 150..210 -> minus 60: 90..150; y 40..120 -> 30..90 (nearest: within 1 px).
    assert abs(rows[0] - 30) <= 1 and abs(rows[-1] - 89) <= 1
    assert abs(cols[0] - 90) <= 1 and abs(cols[-1] - 149) <= 1
    Image.fromarray(np.zeros((320, 400, 3), dtype=np.uint8)).save(tmp_path / "other.png")
    with pytest.raises(InputError, match="masks must have their image's size"):
        mask_in_model_view(tmp_path / "mask.png", tmp_path / "other.png")


@pytest.mark.unit
def test_pixel_auroc_on_hand_made_maps() -> None:
    maps = torch.zeros(2, 225)
    maps[1, 3 * 15 + 4] = 1.0  # one hot patch: row 3, column 4
    masks = np.zeros((2, 240, 240), dtype=bool)
    masks[1, 48:64, 64:80] = True  # exactly that patch's pixels
    assert pixel_auroc(maps, masks) > 0.95
    assert pixel_auroc(-maps, masks) < 0.05
    assert pixel_auroc(torch.full((2, 225), 0.3), masks) == pytest.approx(0.5)
    assert pixel_auroc(maps, np.zeros_like(masks)) is None  # one class: undefined


@pytest.mark.unit
def test_pixel_sample_is_deterministic_and_gathers_the_right_pixels() -> None:
    masks = np.zeros((40, 240, 240), dtype=bool)  # more images than one upsampling chunk
    masks[::3, 96:144, 64:208] = True
    maps = torch.rand(40, 15, 15, generator=torch.Generator().manual_seed(0))
    maps[::3, 6:9, 4:13] += 0.5  # the masked patches score higher, with overlap
    maps = maps.reshape(40, 225)
    selection = pixel_selection(masks, limit=20_000)
    assert len(selection) == 20_000 and np.all(np.diff(selection) > 0)
    assert masks.reshape(-1)[selection].sum() == 10_000  # half from each class
    assert np.array_equal(selection, pixel_selection(masks, limit=20_000))
    assert pixel_selection(masks, limit=masks.size) is None
    upsampled = F.interpolate(
        maps.reshape(-1, 1, 15, 15), size=(240, 240), mode="bilinear", align_corners=False
    ).ravel()
    sampled = pixel_auroc(maps, masks, selection)
    assert sampled == roc_auc_score(masks.ravel()[selection], upsampled[selection])
    full = pixel_auroc(maps, masks)
    assert 0.6 < full < 0.99 and sampled == pytest.approx(full, abs=0.01)


@pytest.mark.unit
def test_pixel_auroc_of_a_run_equals_a_direct_computation(model, report) -> None:
    category = report.categories[1]
    run = category.runs[0]
    with torch.no_grad():
        maps = model.head(
            model.encode(model.pixels(list(category.images))),
            model.reference(list(run.prompts)),
            model.text_prior(category.category),
        ).patch_residual_map
    upsampled = F.interpolate(
        maps.reshape(-1, 1, 15, 15), size=(240, 240), mode="bilinear", align_corners=False
    )
    masks = np.zeros((TEST_IMAGES, 240, 240), dtype=bool)
    for i, image in enumerate(category.images):
        if category.targets[i]:
            mask = image.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
            masks[i] = mask_in_model_view(mask, image)
    assert masks.any()
    assert run.pixel_auroc == pytest.approx(roc_auc_score(masks.ravel(), upsampled.ravel()))


@pytest.mark.unit
def test_json_lists_without_masks_give_no_pixel_auroc(eval_dir, model, report) -> None:
    lists = eval_dir / "json"
    index_to_json(eval_dir / "synth", lists)
    # The training list repeats test/good: each test image must still count once.
    names = ["val_normal", "val_outlier", "normal"]
    samples = load_samples([lists / f"{c}_{n}.json" for c in CATEGORIES for n in names])
    result = evaluate(model, samples, shots=2, seeds=(0, 1, 2))
    assert result.pixel_auroc is None and result.to_dict()["mean"]["pixel_auroc"] is None
    for mine, folder in zip(result.categories, report.categories, strict=True):
        assert (mine.normal, mine.anomalous) == (3, 5)
        assert mine.pixel_auroc is None and folder.pixel_auroc is not None
        assert [r.auroc for r in mine.runs] == pytest.approx([r.auroc for r in folder.runs])
    assert "| - |" in result.to_markdown()
