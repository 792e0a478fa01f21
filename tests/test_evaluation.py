"""Evaluation's numbers: metrics against hand computations, one encoder pass per query,
reproducible prompt draws, the coverage-selected run beside them, pixel AUROC and AUPRO, and the
regions at the operating points."""

from __future__ import annotations

import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from inctrl import InCTRL
from inctrl.data import index_to_json, load_samples
from inctrl.evaluation import evaluate
from inctrl.evaluation_report import MeanStd
from inctrl.metrics import image_metrics
from inctrl.synth import synthesize
from inctrl_runtime.decisions import threshold
from inctrl_runtime.pixel_metrics import PixelValues
from inctrl_runtime.regions import Framing, frame_map
from inctrl_runtime.selection import coverage_selection
from inctrl_runtime.tiling import Tiling

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


# ------------------------------------------------------------------------------ pixel metrics
def frame_maps_and_masks(model, category, prompts) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """A run's patch maps in the synthetic data's 64 x 64 frames (square: all inspected), and
    each test image's mask read with Pillow (None: a normal image)."""
    with torch.no_grad():
        maps = model.head(
            model.encode(model.pixels(list(category.images))),
            model.reference(list(prompts)),
            model.text_prior(category.category),
        ).patch_residual_map
    frames = np.stack([frame_map(m, Framing(64, 64, 240)) for m in maps.numpy()])
    masks = []
    for image, target in zip(category.images, category.targets, strict=True):
        mask = image.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
        masks.append(np.asarray(Image.open(mask)) > 127 if target else None)
    return frames, masks


@pytest.mark.unit
def test_pixel_metrics_of_a_run_equal_a_direct_computation(model, report) -> None:
    """Pixel AUROC and AUPRO at the images' own resolution, from every pixel of every test
    image (``tests/test_pixel_metrics.py`` holds the metrics themselves)."""
    category = report.categories[1]
    run = category.runs[0]
    frames, masks = frame_maps_and_masks(model, category, run.prompts)
    labels = np.stack([np.zeros((64, 64), bool) if m is None else m for m in masks])
    assert labels.any() and 0 < run.pixel_auroc < 1
    assert run.pixel_auroc == pytest.approx(roc_auc_score(labels.ravel(), frames.ravel()))
    assert run.aupro == pytest.approx(PixelValues.of(frames, masks).aupro(), abs=1e-6)
    assert 0 <= run.aupro <= 1 and category.aupro == MeanStd.of(r.aupro for r in category.runs)
    data = report.to_dict()
    assert data["settings"]["aupro_limit"] == 0.3
    assert data["categories"][1]["runs"][0]["aupro"] == run.aupro
    assert data["mean"]["aupro"] == report.aupro._asdict()


@pytest.fixture(scope="module")
def regions_report(eval_dir, model):
    """One category with 21 train/good images: each run (k = 2) calibrates on 19, enough for
    region thresholds at 0.05 and 0.1; 10 normal and 25 anomalous test images, with masks."""
    root = eval_dir / "regions"
    synthesize(root, 5, categories=1, images_per_category=21, size=64)
    samples = load_samples([root])
    return samples, evaluate(model, samples, shots=2, seeds=(0, 1), selection=False)


@pytest.mark.unit
def test_regions_at_the_operating_points(model, regions_report) -> None:
    samples, report = regions_report
    (category,) = report.categories
    pool = sorted(s.image_path for s in samples if s.split == "train")
    prior = model.text_prior(category.category)
    for run in category.runs:
        rest = [path for path in pool if path not in run.prompts]
        with torch.no_grad():
            maxima = model.score(rest, model.reference(list(run.prompts)), prior)
        maxima = np.sort(maxima.max_patch_residual.numpy())
        frames, masks = frame_maps_and_masks(model, category, run.prompts)
        at_01, at_05, at_10 = run.operating_points
        assert at_01.region_threshold is None and at_01.region_recall is None
        assert at_01.region_flag_rate is None
        for point in (at_05, at_10):
            cut = threshold(maxima, point.target_fpr)
            assert point.region_threshold == pytest.approx(cut, abs=1e-5)
            # Regions: scipy's 8-connected components of the masks; touched when a pixel is
            # above the threshold. Flagged: a normal image with any pixel above it.
            touched = []
            for frame, mask in zip(frames, masks, strict=True):
                if mask is not None:
                    labels, count = ndimage.label(mask, structure=np.ones((3, 3)))
                    touched += [(frame[labels == i] > cut).any() for i in range(1, count + 1)]
            flagged = [(f > cut).any() for f, m in zip(frames, masks, strict=True) if m is None]
            assert point.region_recall == pytest.approx(np.mean(touched))
            assert point.region_flag_rate == pytest.approx(np.mean(flagged))
            assert len(flagged) == category.normal == 10
        # A lower rate's threshold is higher: fewer regions touched, fewer normals flagged.
        assert at_10.region_threshold <= at_05.region_threshold
        assert at_10.region_recall >= at_05.region_recall
        assert at_10.region_flag_rate >= at_05.region_flag_rate
    stats = category.operating_points[2]
    recalls = [run.operating_points[2].region_recall for run in category.runs]
    assert stats.region_recall == MeanStd.of(recalls)
    assert stats.region_recall.mean > 0
    data = report.to_dict()
    assert data["mean"]["operating_points"][2]["region_flag_rate"] == (
        stats.region_flag_rate._asdict()
    )
    assert set(data["categories"][0]["runs"][0]["operating_points"][1]) == {
        "target_fpr",
        "threshold",
        "false_positive_rate",
        "recall",
        "region_threshold",
        "region_recall",
        "region_flag_rate",
    }
    (row, mean) = report.region_rows()
    assert row[0] == category.category and row[1] == "-" and mean[0] == "mean"
    assert row[3] == f"{stats.region_recall.mean:.3f} / {stats.region_flag_rate.mean:.3f}"
    assert "Regions at target false-positive rates" in report.to_markdown()


@pytest.mark.unit
def test_json_lists_without_masks_give_no_pixel_auroc(eval_dir, model, report) -> None:
    lists = eval_dir / "json"
    index_to_json(eval_dir / "synth", lists)
    # The training list repeats test/good: each test image must still count once.
    names = ["val_normal", "val_outlier", "normal"]
    samples = load_samples([lists / f"{c}_{n}.json" for c in CATEGORIES for n in names])
    result = evaluate(model, samples, shots=2, seeds=(0, 1, 2))
    assert result.pixel_auroc is None and result.to_dict()["mean"]["pixel_auroc"] is None
    assert result.aupro is None and result.region_rows() == []
    for mine, folder in zip(result.categories, report.categories, strict=True):
        assert (mine.normal, mine.anomalous) == (3, 5)
        assert mine.pixel_auroc is None and folder.pixel_auroc is not None
        assert [r.auroc for r in mine.runs] == pytest.approx([r.auroc for r in folder.runs])
    assert "| - |" in result.to_markdown()


# ------------------------------------------------------------------------------------- tiles
@pytest.fixture(scope="module")
def tiled_reports(eval_dir, model):
    """Non-square 520 x 300 frames of one category, scored tile by tile (1 x 2: two 300-px
    tiles), against every prompt tile and against the same position's."""
    root = eval_dir / "tiled"
    synthesize(root, 2, categories=1, images_per_category=6, size=(520, 300), defects="small")
    samples = load_samples([root])
    common = {"shots": 2, "seeds": (0, 1), "tiling": Tiling(1, 2)}
    return samples, {
        prompts: evaluate(model, samples, tile_prompts=prompts, **common)
        for prompts in ("every", "same")
    }


@pytest.mark.unit
def test_tiled_evaluation_scores_frames_as_inctrl_score_tiles_does(
    model, eval_dir, tiled_reports
) -> None:
    from inctrl.cli.score import run_score

    samples, reports = tiled_reports
    (category,) = reports["every"].categories
    assert "tiles 1x2 (every position)" in reports["every"].settings.describe()
    assert category.selected is None  # no coverage run with tiles
    run = category.runs[0]
    records = run_score(eval_dir / "tiny.safetensors", category.category,
                        [Path(p) for p in run.prompts], [Path(p) for p in category.images],
                        tiles="1x2")  # fmt: skip
    assert np.abs(np.subtract(run.scores, [r["score"] for r in records])).max() < 1e-5
    # pixel AUROC over the stitched maps: every pixel inspected
    layout = Tiling(1, 2).layout(520, 300, 240)
    frames = np.stack([layout.map(np.asarray(r["patch_residual_map"], np.float32))
                       for r in records])  # fmt: skip
    masks = []
    for image, target in zip(category.images, category.targets, strict=True):
        mask = image.replace("/test/", "/ground_truth/").replace(".png", "_mask.png")
        masks.append(np.asarray(Image.open(mask)) > 127 if target else np.zeros((300, 520), bool))
    assert np.isfinite(frames).all()
    assert run.pixel_auroc == pytest.approx(roc_auc_score(np.ravel(masks), frames.ravel()))
    assert run.calibration == len([s for s in samples if s.split == "train"]) - 2


@pytest.mark.unit
def test_same_position_prompts_compare_each_tile_with_the_prompts_tile_there(
    model, tiled_reports
) -> None:
    _, reports = tiled_reports
    (category,) = reports["same"].categories
    run = category.runs[1]
    layout = Tiling(1, 2).layout(520, 300, 240)
    prior = model.text_prior(category.category)
    by_position = []
    with torch.no_grad():
        for box in layout.boxes:
            bank = model.reference([Image.open(p).crop(box) for p in run.prompts])
            queries = [Image.open(p).crop(box) for p in category.images]
            found = model.score(queries, bank, prior)
            by_position.append((found.score.numpy(), found.max_patch_residual.numpy()))
    scores, maxima = (np.stack(field, axis=1) for field in zip(*by_position, strict=True))
    assert np.abs(np.asarray(run.scores) - maxima.max(axis=1)).max() < 1e-5  # the frame score
    assert np.abs(np.asarray(run.tile_scores) - scores).max() < 1e-5
    every = reports["every"].categories[0].runs[1]
    assert every.prompts == run.prompts and every.scores != run.scores


@pytest.mark.unit
def test_reports_compare_side_by_side_with_the_defects_outside_the_crop_apart(
    tiled_reports, tmp_path
) -> None:
    import json

    from inctrl_bench.evaluations import outside_crop, reduction_row, report_row

    _, reports = tiled_reports
    report = reports["every"]
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report.to_dict()))
    row = report_row(path)
    assert row[0] == "1x2 (every position)" and row[1] == str(report.auroc)
    assert row[4] == str(report.pixel_auroc)
    reduced = reduction_row(path, None)  # the frame score's column first
    assert reduced[1] == str(report.auroc) and reduced[4] == "-"  # no untiled report given
    run = report.categories[0].runs[0]
    assert len(run.tile_scores) == len(run.scores) and len(run.tile_scores[0]) == 2
    assert [max(tiles) for tiles in run.tile_scores] != pytest.approx(run.scores, abs=1e-7)
    (category,) = report.categories
    # 520 x 300 frames: the centre crop sees columns 110..409; the small defects of every third
    # image lie in a side band
    flags = [outside_crop(image) for image, target in zip(category.images, category.targets,
                                                          strict=True) if target]  # fmt: skip
    assert any(flags) and not all(flags)
