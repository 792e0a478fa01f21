"""Synthetic MVTec-AD-style data: determinism, layout, masks, visible defects, input errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl import synth
from inctrl.synth import CATEGORIES, DEFECTS, render, split_counts, synthesize
from inctrl_runtime.errors import InputError

pytestmark = pytest.mark.unit

SMALL = {"categories": 2, "images_per_category": 4, "size": 64}


def read_tree(root: Path) -> dict[str, bytes]:
    """Relative path -> bytes of every file under ``root``."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synth") / "data"
    return root, synthesize(root, seed=3, **SMALL)


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path, small_set) -> None:
    root, _ = small_set
    again = read_tree(root)
    synthesize(tmp_path / "again", seed=3, **SMALL)
    assert read_tree(tmp_path / "again") == again
    synthesize(tmp_path / "other", seed=4, **SMALL)
    other = read_tree(tmp_path / "other")
    assert other.keys() == again.keys()
    images = [name for name in again if "ground_truth" not in name]
    assert all(other[name] != again[name] for name in images)


def test_layout_counts_and_summary(small_set) -> None:
    root, summary = small_set
    counts = split_counts(4)
    assert counts == {
        "train": {"good": 4},
        "test": {"good": 2, **dict.fromkeys(DEFECTS, 1)},
    }
    names = [category.name for category in CATEGORIES[:2]]
    assert sorted(p.name for p in root.iterdir()) == sorted(names)
    assert summary["root"] == str(root)
    assert summary["images"] == 2 * (4 + 2 + len(DEFECTS))
    for name in names:
        assert summary["categories"][name]["train"] == counts["train"]
        assert summary["categories"][name]["test"] == counts["test"]
        for split, labels in counts.items():
            assert sorted(p.name for p in (root / name / split).iterdir()) == sorted(labels)
            for label, count in labels.items():
                files = sorted((root / name / split / label).iterdir())
                assert [p.name for p in files] == [f"{i:03d}.png" for i in range(count)]
        assert sorted(p.name for p in (root / name / "ground_truth").iterdir()) == sorted(DEFECTS)
    assert not list(root.parent.glob(".*"))  # no staging folder left behind


def test_masks_binary_non_empty_and_sized_like_images(small_set) -> None:
    root, _ = small_set
    masks = sorted(root.glob("*/ground_truth/*/*_mask.png"))
    assert len(masks) == 2 * len(DEFECTS)
    for mask_path in masks:
        category, _, defect, name = mask_path.relative_to(root).parts
        image = Image.open(root / category / "test" / defect / name.replace("_mask", ""))
        mask = Image.open(mask_path)
        assert image.mode == "RGB" and mask.mode == "L"
        assert mask.size == image.size == (64, 64)
        values = np.unique(np.asarray(mask))
        assert set(values) <= {0, 255} and 255 in values


@pytest.mark.parametrize("category", [c.name for c in CATEGORIES])
def test_every_defect_changes_the_masked_pixels(category: str) -> None:
    for defect in DEFECTS:
        for index in range(2):
            sample = render(category, "test", defect, index, size=64)
            clean = render(category, "test", defect, index, size=64, clean=True)
            assert not clean.mask.any()
            assert 0 < sample.mask.sum() < sample.mask.size / 4
            diff = np.abs(sample.image.astype(np.int16) - clean.image).mean(axis=2)
            inside, outside = diff[sample.mask].mean(), diff[~sample.mask].mean()
            assert inside > 4 and inside > 10 * outside, (defect, index, inside, outside)


def test_normal_images_vary_but_stay_one_product() -> None:
    colors = {}
    for category in CATEGORIES:
        images = [render(category.name, "train", "good", i, size=64).image for i in range(4)]
        assert len({image.tobytes() for image in images}) == 4
        colors[category.name] = np.array([image.reshape(-1, 3).mean(0) for image in images])
    for name, own in colors.items():
        spread = np.linalg.norm(own - own.mean(0), axis=1).max()
        nearest_other = min(
            np.linalg.norm(own.mean(0) - other.mean(0))
            for other_name, other in colors.items()
            if other_name != name
        )
        assert spread < nearest_other, name


def test_render_is_deterministic_and_seed_dependent() -> None:
    first = render("synth_wood", "test", "warp", 1, seed=5, size=48)
    second = render("synth_wood", "test", "warp", 1, seed=5, size=48)
    other = render("synth_wood", "test", "warp", 1, seed=6, size=48)
    assert np.array_equal(first.image, second.image) and np.array_equal(first.mask, second.mask)
    assert not np.array_equal(first.image, other.image)


@pytest.mark.parametrize("count", [0, len(CATEGORIES) + 1])
def test_category_count_out_of_range(tmp_path: Path, count: int) -> None:
    message = f"categories must be an integer between 1 and {len(CATEGORIES)}; got {count}"
    with pytest.raises(InputError, match=message):
        synthesize(tmp_path / "data", categories=count, images_per_category=1, size=32)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"size": 16}, "size must be"),
        ({"images_per_category": 0}, "images_per_category must be"),
        ({"seed": -1}, "seed must be"),
    ],
)
def test_bad_arguments(tmp_path: Path, arguments: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        synthesize(tmp_path / "data", **arguments)


def test_render_rejects_unknown_names() -> None:
    with pytest.raises(InputError, match="unknown category"):
        render("bottle", "test", "good", 0)
    with pytest.raises(InputError, match="train/good, test/good"):
        render("synth_wood", "train", "scratch", 0)


def test_refuses_non_empty_root_and_accepts_empty_one(tmp_path: Path) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match=f"{root}: folder is not empty; choose a new folder"):
        synthesize(root, categories=1, images_per_category=1, size=32)
    assert read_tree(root) == {"keep.txt": b"mine"}
    (root / "keep.txt").unlink()
    synthesize(root, categories=1, images_per_category=1, size=32)
    assert (root / "synth_fabric" / "train" / "good" / "000.png").is_file()
    with pytest.raises(InputError, match="not a folder"):
        synthesize(root / "synth_fabric" / "train" / "good" / "000.png")


def test_failure_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(synth, "_save_png", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        synthesize(tmp_path / "data", categories=1, images_per_category=1, size=32)
    assert not list(tmp_path.iterdir())


def test_default_run_is_quick(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = synthesize(tmp_path / "data")
    elapsed = time.perf_counter() - start
    assert list(summary["categories"]) == [c.name for c in CATEGORIES[:4]]
    assert len(list((tmp_path / "data").rglob("*.png"))) == 4 * (12 + 6 + 2 * 3 * len(DEFECTS))
    with Image.open(tmp_path / "data" / "synth_chip" / "test" / "hole" / "000.png") as image:
        assert image.size == (256, 256)
    assert elapsed < 30, f"default synthetic data set took {elapsed:.1f} s"


@pytest.mark.parametrize("size", [(320, 200), (200, 320)])
def test_non_square_frames_cut_from_the_product_s_square(size: tuple[int, int]) -> None:
    width, height = size
    sample = render("synth_wood", "test", "stain", 0, size=size)
    assert sample.image.shape == (height, width, 3) and sample.mask.shape == (height, width)
    assert sample.mask.any()
    # the normal frame is the middle of the square one, and the defect changes only its mask
    square = render("synth_wood", "test", "stain", 0, size=max(size), clean=True).image
    top, left = (max(size) - height) // 2, (max(size) - width) // 2
    clean = render("synth_wood", "test", "stain", 0, size=size, clean=True).image
    assert np.array_equal(clean, square[top : top + height, left : left + width])
    changed_rows, changed_cols = np.nonzero((sample.image != clean).any(axis=2))
    rows, cols = np.nonzero(sample.mask)  # the defect's anti-aliased rim may reach 2 px out
    assert rows.min() - 2 <= changed_rows.min() and changed_rows.max() <= rows.max() + 2
    assert cols.min() - 2 <= changed_cols.min() and changed_cols.max() <= cols.max() + 2


def test_small_defects_are_small_and_a_third_lie_where_a_centre_crop_cannot_see() -> None:
    width, height = 640, 400
    band = (width - height) // 2  # the columns a centre crop of the shorter side cuts off
    for category in ("synth_fabric", "synth_washer"):
        for defect in DEFECTS:
            for index in range(6):
                mask = render(category, "test", defect, index, size=(width, height),
                              defects="small").mask  # fmt: skip
                rows, cols = np.nonzero(mask)
                assert rows.size > 0, (category, defect, index)
                across = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
                assert 3 <= across <= 64, (category, defect, index, across)
                if index % 3 == 2:  # in a side band, whole
                    assert cols.max() < band or cols.min() >= width - band, (defect, index)


def test_frame_sizes_and_defect_sizes_are_checked(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="width must be an integer between 32 and 1024"):
        synthesize(tmp_path / "a", size=(2000, 500))
    with pytest.raises(InputError, match="unknown defect size 'tiny'"):
        synthesize(tmp_path / "b", size=64, defects="tiny")
    summary = synthesize(tmp_path / "c", categories=1, images_per_category=1, size=(96, 64))
    assert summary["size"] == [96, 64] and summary["defects"] == "default"
    assert Image.open(tmp_path / "c" / "synth_fabric" / "train" / "good" / "000.png").size == (
        96, 64,
    )  # fmt: skip
