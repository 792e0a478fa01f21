"""Evaluation: metrics against hand computations, one encoder pass per query, reproducible prompt
draws, the authors' prompt files, pixel AUROC, reports, and the `inctrl evaluate` command."""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import perturb_heads, run_inctrl
from PIL import Image
from sklearn.metrics import roc_auc_score

from inctrl import InCTRL, InputError, get_config
from inctrl.cli import main
from inctrl.cli.evaluate import run_evaluate
from inctrl.data import index_to_json, load_samples
from inctrl.evaluation import evaluate, operating_points
from inctrl.evaluation_report import OPERATING_COLUMNS, SELECTION_COLUMNS, TABLE_COLUMNS, MeanStd
from inctrl.metrics import image_metrics, mask_in_model_view, pixel_auroc, pixel_selection
from inctrl.prompt_files import read_prompt_file, write_prompt_file
from inctrl.synth import synthesize
from inctrl_runtime.decisions import TARGET_FPRS, min_normals, threshold
from inctrl_runtime.selection import coverage_selection

CATEGORIES = ["synth_fabric", "synth_washer"]
TEST_IMAGES = 8  # per category: 3 test/good and one of each of the 5 defects
POOL_IMAGES = 6  # per category: train/good


def table_header(columns) -> str:
    return "| " + " | ".join(columns) + " |"


def rank_auroc(targets, scores) -> float:
    """Mann-Whitney AUROC: positives' mean rank (ties averaged) against the negatives."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=bool)
    ranks = np.array([(scores < s).sum() + ((scores == s).sum() + 1) / 2 for s in scores])
    positives, negatives = targets.sum(), (~targets).sum()
    return (ranks[targets].sum() - positives * (positives + 1) / 2) / (positives * negatives)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Synthetic MVTec-layout data (2 categories, 6 train/good images each), a tiny checkpoint."""
    root = tmp_path_factory.mktemp("evaluation")
    synthesize(root / "synth", 0, categories=2, images_per_category=6, size=64)
    perturb_heads(InCTRL(get_config("tiny"))).save(root / "tiny.safetensors")
    return root


@pytest.fixture(scope="module")
def model(workspace) -> InCTRL:
    return InCTRL.from_checkpoint(workspace / "tiny.safetensors")


@pytest.fixture(scope="module")
def samples(workspace):
    return load_samples([workspace / "synth"])


@pytest.fixture(scope="module")
def report(model, samples):
    return evaluate(model, samples, shots=2, seeds=(0, 1, 2), checkpoint_name="tiny")


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
def test_each_image_is_encoded_once_whatever_the_number_of_seeds(workspace, samples) -> None:
    model = InCTRL.from_checkpoint(workspace / "tiny.safetensors")
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


# ------------------------------------------------------ operating points, prompt selection
@pytest.mark.unit
def test_operating_points_on_hand_made_scores() -> None:
    calibration = [0.1 * i for i in range(19, 0, -1)]  # n = 19, any order: 0.01 needs 99
    # Thresholds: at 0.1 the ceil(20 * 0.9) = 18th smallest, 1.8; at 0.05 the 19th, 1.9.
    # A score equal to the threshold is not flagged: its p-value is (1 + 2) / 20 > 0.1.
    targets = [0, 0, 0, 0, 1, 1, 1]
    scores = [0.5, 1.85, 1.95, 1.8, 1.85, 2.5, 1.0]
    at_01, at_05, at_10 = operating_points(calibration, targets, scores)
    assert at_01 == (0.01, None, None, None)
    assert at_05.threshold == pytest.approx(1.9)
    assert (at_05.false_positive_rate, at_05.recall) == (1 / 4, 1 / 3)  # 1.95; 2.5
    assert at_10.threshold == pytest.approx(1.8)
    assert (at_10.false_positive_rate, at_10.recall) == (2 / 4, 2 / 3)  # 1.85, 1.95; 1.85, 2.5
    assert [p.target_fpr for p in operating_points([], targets, scores)] == list(TARGET_FPRS)
    assert all(p.threshold is None for p in operating_points([], targets, scores))


@pytest.fixture(scope="module")
def calibrated(workspace, model):
    """One category with 20 train/good images: each run (k = 2) calibrates on 18, enough for
    a false-positive rate of 0.1, too few for 0.05 (19) and 0.01 (99)."""
    root = workspace / "pool20"
    synthesize(root, 3, categories=1, images_per_category=20, size=64)
    samples = load_samples([root])
    return samples, evaluate(model, samples, shots=2, seeds=(0, 1, 2), pixel=False)


@pytest.mark.unit
def test_each_run_is_calibrated_on_train_good_less_its_prompts(model, calibrated) -> None:
    samples, report = calibrated
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
                assert cut is None and point == (point.target_fpr, None, None, None)
                continue
            assert point.threshold == pytest.approx(cut, abs=1e-5)
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
def test_json_lists_without_masks_give_no_pixel_auroc(workspace, model, report) -> None:
    lists = workspace / "json"
    index_to_json(workspace / "synth", lists)
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


# ------------------------------------------------------------------------ reports, command line
@pytest.mark.cli
def test_json_and_markdown_files(workspace, tmp_path) -> None:
    result = run_evaluate(
        [workspace / "synth"],
        2,
        checkpoint=workspace / "tiny.safetensors",
        seeds=2,
        json_out=tmp_path / "out" / "report.json",
        markdown_out=tmp_path / "out" / "report.md",
    )
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == result.to_dict()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]
    data = result.to_dict()
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["shots"] == 2
    assert data["mean"]["auroc"]["mean"] == pytest.approx(result.auroc.mean)
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert lines[0].startswith("InCTRL evaluation of") and "k = 2" in lines[0]
    assert lines[2] == table_header(TABLE_COLUMNS)
    fabric = result.categories[0]
    assert lines[4] == (
        f"| synth_fabric | {fabric.auroc.mean:.3f} ± {fabric.auroc.std:.3f} | "
        f"{fabric.auprc.mean:.3f} ± {fabric.auprc.std:.3f} | "
        f"{fabric.pixel_auroc.mean:.3f} ± {fabric.pixel_auroc.std:.3f} | 3 / 5 |"
    )
    assert lines[6].startswith(f"| mean | {result.auroc.mean:.3f} ± ") and lines[6].endswith(
        "| 6 / 10 |"
    )
    # Then the prompt choice and the operating points, each a title and a table of 2 + 3 rows.
    assert lines[8].startswith("Prompt choice") and lines[10] == table_header(SELECTION_COLUMNS)
    choice = fabric.selection
    assert lines[12] == (
        f"| synth_fabric | {choice.selected:.3f} | {fabric.auroc} | {choice.random_min:.3f} |"
    )
    assert lines[16].startswith("Operating points") and lines[18] == table_header(OPERATING_COLUMNS)
    assert lines[20] == "| synth_fabric | 4 | - | - | - |"  # 6 train/good less 2 prompts
    assert lines[22] == "| mean | 8 | - | - | - |" and len(lines) == 23


@pytest.mark.cli
def test_command_end_to_end(workspace, model, samples, tmp_path) -> None:
    checkpoint = str(workspace / "tiny.safetensors")
    common = ["evaluate", "-c", checkpoint, "--data", str(workspace / "synth"), "--shots", "2"]
    result = run_inctrl(*common, "--seeds", "2", "--json", "-", "--markdown", "r.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = evaluate(model, samples, shots=2, seeds=(0, 1), checkpoint_name=checkpoint)
    assert printed["settings"] == expected.to_dict()["settings"]
    assert printed["mean"]["auroc"] == pytest.approx(expected.auroc._asdict())
    assert printed["mean"]["pixel_auroc"] == pytest.approx(expected.pixel_auroc._asdict())
    assert (tmp_path / "r.md").read_text() == expected.to_markdown()

    table = run_inctrl(*common, "--seeds", "1", "--no-pixel", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "synth_fabric" in table.stdout and "mean" in table.stdout
    assert "± 0.000" in table.stdout and "3 / 5" in table.stdout
    assert "coverage AUROC" in table.stdout and "Operating points" in table.stdout


@pytest.fixture(scope="module")
def bad_inputs(workspace) -> Path:
    """A category without anomalies; prompt folders that are empty, hold k = 2, or garbage."""
    root = workspace / "bad"
    for split in ("train", "test"):
        source = workspace / "synth" / "synth_fabric" / split / "good"
        shutil.copytree(source, root / "only_good" / "widget" / split / "good")
    (root / "empty").mkdir()
    prompts = torch.zeros(2, 3, 240, 240)
    for category in CATEGORIES:
        write_prompt_file(root / "k2" / f"{category}.pt", prompts)
        (root / "garbage").mkdir(exist_ok=True)
        (root / "garbage" / f"{category}.pt").write_bytes(b"junk" * 16)
    return root


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "bad/only_good", "--shots", "2"], "'widget': no anomalous test images"),
        (["--data", "synth", "--shots", "7"], "train/good holds only 6"),
        (["--data", "synth", "--shots", "2", "--prompts", "bad/empty"], "synth_fabric.pt: no such"),
        (["--data", "synth", "--shots", "3", "--prompts", "bad/k2"], "but --shots is 3"),
        (["--data", "synth", "--shots", "2", "--prompts", "bad/garbage"], "not a readable torch"),
        (["--data", "synth", "--shots", "2", "--seeds", "0"], "--seeds"),
        (["--data", "synth"], "no --shots"),
        (["--shots", "2"], "no --data"),
        (["--data", "nowhere", "--shots", "2"], "nowhere: no such data folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    workspace, bad_inputs, args, message, capsys, monkeypatch
):
    monkeypatch.chdir(workspace)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "-c", "tiny.safetensors", "--json", "-", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.cli
def test_bad_input_in_a_real_process(workspace, bad_inputs) -> None:
    args = ["evaluate", "-c", "tiny.safetensors", "--data", "bad/only_good", "--shots", "2"]
    result = run_inctrl(*args, cwd=workspace)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: category 'widget': no anomalous test images")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.unit
def test_plot_shows_every_category(report, tmp_path) -> None:
    from PIL import Image

    from inctrl.plots import plot_report

    plot_report(report, tmp_path / "plots" / "report.png")
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["report.png"]
    with Image.open(tmp_path / "plots" / "report.png") as picture:
        assert picture.format == "PNG"
        # one column (ROC above, histogram below) per category
        assert picture.width > picture.height * 0.8 * len(report.categories) / 2
