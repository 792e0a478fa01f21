"""Prompt selection from a pool (``inctrl_runtime.selection``): coverage on hand-made tokens,
the seeded random draw and pool split, and ``inctrl-run register --pool`` end to end."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inctrl.cli
from inctrl.cli.prompts import run_prompts_make
from inctrl.data import Sample, load_samples, normal_pool
from inctrl.evaluation import draw_prompts
from inctrl.model import InCTRL
from inctrl.synth import render, synthesize
from inctrl_runtime.cli import main
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import list_images
from inctrl_runtime.pool import select_prompts
from inctrl_runtime.preprocess import pixel_digest
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.selection import (
    SELECTIONS,
    Selection,
    coverage_selection,
    mean_residual,
    random_draw,
    split_pool,
)

from helpers import run_main, snapshot


def unit_tokens(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Seeded random unit-norm tokens (norm along the last axis)."""
    tokens = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)


def naive_mean_residual(patches: np.ndarray, chosen: list[int]) -> float:
    """The measure written out: per image, patch and layer, min over every prompt patch of
    0.5 * (1 - cos), averaged."""
    n, layers, count, _ = patches.shape
    total = 0.0
    for i, layer, p in itertools.product(range(n), range(layers), range(count)):
        cos = [patches[i, layer, p] @ patches[j, layer, q] for j in chosen for q in range(count)]
        total += 0.5 * (1.0 - max(cos))
    return total / (n * layers * count)


# ----------------------------------------------------------------------------- coverage
@pytest.mark.unit
def test_coverage_takes_the_known_best_prompt_then_the_uncovered_image() -> None:
    e1, e2, e3 = np.eye(3, dtype=np.float32)
    # One layer, two patches each: image 0 holds both e1 and e2, so it alone covers images 0-2
    # exactly and image 3 (e3, orthogonal) at residual 0.5: mean 0.5 / 4 = 0.125. Image 1
    # alone scores (0.25 + 0 + 0.5 + 0.5) / 4, image 3 alone (0.5 * 3 + 0) / 4.
    pool = np.stack([[[e1, e2]], [[e1, e1]], [[e2, e2]], [[e3, e3]]])
    assert pool.shape == (4, 1, 2, 3)
    assert coverage_selection(pool, 1) == Selection((0,), 0.125)
    assert mean_residual(pool, [1]) == 0.3125
    assert mean_residual(pool, [3]) == 0.375
    assert coverage_selection(pool, 2) == Selection((0, 3), 0.0)


@pytest.mark.unit
@pytest.mark.parametrize("k", [1, 2, 3])
def test_coverage_is_the_greedy_of_the_measure_written_out(k: int) -> None:
    pool = unit_tokens((6, 2, 5, 4), seed=k)
    chosen: list[int] = []
    for _ in range(k):  # the greedy step by brute force: every candidate's mean, the lowest
        rest = [j for j in range(len(pool)) if j not in chosen]
        chosen.append(min(rest, key=lambda j: naive_mean_residual(pool, [*chosen, j])))
    selection = coverage_selection(pool, k)
    assert selection.indices == tuple(chosen)
    assert selection.mean_residual == pytest.approx(naive_mean_residual(pool, chosen), abs=1e-6)
    assert mean_residual(pool, chosen) == pytest.approx(selection.mean_residual, abs=1e-6)


@pytest.mark.unit
def test_coverage_follows_the_images_not_their_order() -> None:
    pool = unit_tokens((9, 3, 6, 8), seed=3)
    order = np.random.default_rng(4).permutation(len(pool))
    for k in (1, 3, 5):
        want = coverage_selection(pool, k)
        got = coverage_selection(pool[order], k)
        assert tuple(int(order[i]) for i in got.indices) == want.indices
        assert got.mean_residual == pytest.approx(want.mean_residual, abs=1e-6)
        assert coverage_selection(pool, k) == want  # and the same pool, the same answer


@pytest.mark.unit
def test_coverage_ties_go_to_the_lowest_index() -> None:
    pool = np.repeat(unit_tokens((1, 2, 3, 4), seed=5), 4, axis=0)  # four equal images
    selection = coverage_selection(pool, 1)
    assert selection.indices == (0,)
    assert selection.mean_residual == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(InputError, match="holds 1 image and copies of them"):
        coverage_selection(pool, 3)  # a second prompt would be a copy of the first


@pytest.mark.unit
@pytest.mark.parametrize("k", [2, 3])
def test_coverage_never_picks_both_of_a_near_duplicate_pair(k: int) -> None:
    distinct = unit_tokens((6, 3, 10, 16), seed=6)
    noise = 1e-3 * np.random.default_rng(7).standard_normal(distinct[0].shape)
    copy = distinct[0] + noise.astype(np.float32)
    copy /= np.linalg.norm(copy, axis=-1, keepdims=True)
    for where in range(len(distinct) + 1):  # the copy at every position of the pool
        pool = np.insert(distinct, where, copy, axis=0)
        pair = {0 if where > 0 else 1, where}
        chosen = set(coverage_selection(pool, k).indices)
        assert len(chosen) == k
        assert not pair <= chosen, (where, chosen)


@pytest.mark.unit
def test_coverage_and_the_measure_refuse_what_they_cannot_do() -> None:
    pool = unit_tokens((3, 1, 2, 4), seed=8)
    for bad in (0, 4):
        with pytest.raises(InputError, match=f"cannot select {bad} prompts from 3 images"):
            coverage_selection(pool, bad)
    with pytest.raises(InputError, match="n x L x P x D"):
        coverage_selection(pool[0], 1)
    with pytest.raises(InputError, match="at least one"):
        mean_residual(pool, [])
    with pytest.raises(InputError, match="not all in a pool of 3"):
        mean_residual(pool, [3])


# ------------------------------------------------------------------- random draw, split
def pool_paths(count: int) -> list[str]:
    return [f"/data/candle/train/good/{i:03d}.png" for i in range(count)]


@pytest.mark.unit
@pytest.mark.parametrize(("k", "seed"), [(1, 0), (2, 0), (2, 7), (4, 3)])
def test_random_draw_is_the_evaluations_draw(k: int, seed: int) -> None:
    paths = pool_paths(20)
    shuffled = random.Random(seed).sample(paths, len(paths))
    samples = [Sample(p, 0, "candle", "train") for p in shuffled]
    want = [s.image_path for s in draw_prompts(samples, k, seed, "candle")]
    assert random_draw(shuffled, k, seed, "candle") == want
    assert random_draw(paths, k, seed, "candle") == want
    assert SELECTIONS == ("coverage", "random")


@pytest.mark.unit
def test_split_pool_is_seeded_by_seed_and_category_not_by_order() -> None:
    paths = pool_paths(21)
    selection, calibration = split_pool(paths, 0, "candle", shots=2)
    assert len(calibration) == 10 and len(selection) == 11  # half, rounded down
    assert sorted(selection + calibration) == paths
    assert selection == sorted(selection) and calibration == sorted(calibration)
    for order in range(3):
        shuffled = random.Random(order).sample(paths, len(paths))
        assert split_pool(shuffled, 0, "candle", shots=2) == (selection, calibration)
    others = {tuple(split_pool(paths, seed, name)[1]) for seed, name in [(1, "candle"), (0, "x")]}
    assert tuple(calibration) not in others
    assert len(others) == 2


@pytest.mark.unit
def test_split_pool_sorts_by_the_key_given() -> None:
    samples = [Sample(p, 0, "candle", "train") for p in pool_paths(8)]
    by_path = split_pool(samples[::-1], 2, "candle", key=lambda s: s.image_path)
    plain = split_pool(pool_paths(8), 2, "candle")
    assert tuple([s.image_path for s in part] for part in by_path) == plain


@pytest.mark.unit
@pytest.mark.parametrize(("count", "shots"), [(0, 1), (1, 1), (2, 2), (4, 3)])
def test_split_pool_refuses_a_pool_too_small(count: int, shots: int) -> None:
    with pytest.raises(InputError, match=f"a pool of {count} images is too small") as err:
        split_pool(pool_paths(count), 0, "candle", shots=shots)
    assert "\n" not in str(err.value)


@pytest.mark.unit
@pytest.mark.parametrize(("count", "shots"), [(2, 1), (3, 2), (5, 3)])
def test_split_pool_at_its_smallest_leaves_k_for_selection(count: int, shots: int) -> None:
    selection, calibration = split_pool(pool_paths(count), 0, "candle", shots=shots)
    assert len(selection) >= shots and len(calibration) >= 1


# --------------------------------------------------------------- inctrl-run register --pool
def save_png(array: np.ndarray, path: Path) -> Path:
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def pool(tmp_path_factory) -> dict[str, list[Path]]:
    """A folder of seven normal images: six distinct synthetic washers and a near-duplicate
    pair (an image and a copy with +-1 noise), the copy named to sort between the others."""
    folder = tmp_path_factory.mktemp("pool")
    distinct = [render("synth_washer", "train", "good", i, size=96).image for i in range(6)]
    files = [save_png(image, folder / f"washer_{i}.png") for i, image in enumerate(distinct)]
    noise = np.random.default_rng(0).integers(-1, 2, distinct[2].shape)
    copy = np.clip(distinct[2].astype(int) + noise, 0, 255).astype(np.uint8)
    twin = save_png(copy, folder / "washer_2b.png")
    return {"files": list_images(folder), "pair": [files[2], twin]}


def register_pool(bundle: Path, folder: Path, *args: str):
    return run_main(main, "register", bundle, "--category", "candle", "--pool", folder, *args)


def bank_of(bundle: Path) -> NumpyBank:
    return NumpyBank.load(bundle / "references" / "candle.npz")


@pytest.mark.cli
@pytest.mark.parametrize("k", [2, 3])
def test_register_pool_never_registers_both_of_a_near_duplicate_pair(bundle, pool, k) -> None:
    folder = pool["files"][0].parent
    done = register_pool(bundle, folder, "--shots", str(k))
    assert done.code == 0, done.err
    bank = bank_of(bundle)
    assert bank.shots == k and bank.calibration is None
    assert len(set(bank.sources)) == k and set(bank.sources) <= {str(p) for p in pool["files"]}
    assert not {str(p) for p in pool["pair"]} <= set(bank.sources), bank.sources
    # What it printed is what the API selects, and what it registered.
    detector = Detector.open(bundle)
    selection = select_prompts(detector, pool["files"], k)
    chosen = [str(pool["files"][i]) for i in selection.indices]
    assert list(bank.sources) == chosen
    assert f"selected {k} of 7 images by coverage" in done.err
    assert f"(mean patch residual {selection.mean_residual:.4f}): {', '.join(chosen)}" in done.err
    assert f"registered {k} shots of 'candle'" in done.err


@pytest.mark.cli
def test_select_follows_the_pool_not_its_order(bundle, pool) -> None:
    detector = Detector.open(bundle)
    files = pool["files"]
    shuffled = random.Random(1).sample(files, len(files))
    for method in SELECTIONS:
        picks = [
            [
                order[i]
                for i in select_prompts(
                    detector, order, 3, method, seed=4, category="candle"
                ).indices
            ]
            for order in (files, shuffled, files)
        ]
        assert picks[0] == picks[1] == picks[2], method


@pytest.mark.cli
@pytest.mark.parametrize("seed", [0, 5])
def test_register_pool_random_is_the_evaluations_draw(bundle, pool, seed: int) -> None:
    folder = pool["files"][0].parent
    done = register_pool(bundle, folder, "--shots", "2", "--select", "random", "--seed", str(seed))
    assert done.code == 0, done.err
    samples = [Sample(str(p), 0, "candle", "train") for p in reversed(pool["files"])]
    want = [s.image_path for s in draw_prompts(samples, 2, seed, "candle")]
    assert list(bank_of(bundle).sources) == want
    assert "by random (mean patch residual" in done.err


@pytest.mark.cli
def test_register_pool_calibrates_only_on_images_the_selection_never_saw(bundle, pool) -> None:
    folder = pool["files"][0].parent
    done = register_pool(bundle, folder, "--shots", "2", "--calibrate", "--seed", "3")
    assert done.code == 0, done.err
    part, apart = split_pool(pool["files"], 3, "candle", shots=2)
    assert (len(part), len(apart)) == (4, 3)
    bank = bank_of(bundle)
    assert set(bank.sources) <= {str(p) for p in part}
    detector = Detector.open(bundle)
    digests = {str(p): pixel_digest(detector.pixels([p])[0]) for p in pool["files"]}
    assert bank.calibration is not None and bank.calibration.n == 3
    calibrated = set(bank.calibration.digests)
    assert calibrated == {digests[str(p)] for p in apart}
    assert not calibrated & set(bank.digests)
    assert not calibrated & {digests[str(p)] for p in part}
    assert "selected 2 of 4 images by coverage" in done.err
    assert "calibrated on n = 3 images set apart; threshold at fpr 0.01: none" in done.err
    assert "needs at least 99 calibration images" in done.err
    # The bank records how its prompts were chosen; info shows it.
    selection = select_prompts(detector, part, 2, "coverage", 3, "candle")
    assert bank.selection == {
        "method": "coverage", "pool": 4, "seed": 3,
        "mean_residual": selection.mean_residual, "calibration_set_apart": 3,
    }  # fmt: skip
    info = run_main(main, "info", bundle, "--json")
    assert json.loads(info.out)["categories"]["candle"]["bank"]["selection"] == bank.selection


@pytest.mark.cli
def test_register_pool_refuses_a_calibration_image_the_selection_sees(bundle, tmp_path) -> None:
    folder = tmp_path / "pool"
    folder.mkdir()
    images = [render("synth_washer", "train", "good", i, size=96).image for i in range(3)]
    files = [save_png(image, folder / f"{i}.png") for i, image in enumerate(images)]
    copy = save_png(images[0], folder / "0_copy.png")  # the same pixels under another name
    seed = next(  # a split that sets the copy and its original on different sides
        s
        for s in range(100)
        if len({files[0], copy} & set(split_pool(files + [copy], s, "candle")[1])) == 1
    )
    before = snapshot(bundle)
    done = register_pool(bundle, folder, "--shots", "1", "--calibrate", "--seed", str(seed))
    done.assert_refused("holds the same pixels as", "calibration images must be unseen")
    assert snapshot(bundle) == before


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (["--shots", "2", "--shot", "{first}"], ["--pool and --shot exclude each other"]),
        ([], ["no --shots given"]),
        (["--shots", "2", "--select", "best"], ["unknown --select 'best'", "coverage or random"]),
        (["--shots", "8"], ["cannot select 8 prompts from 7 images"]),
        (["--shots", "0"], ["cannot select 0 prompts from 7 images"]),
        (["--shots", "5", "--calibrate"], ["a pool of 7 images is too small", "at least 9"]),
    ],
)
def test_register_pool_refusals(bundle, pool, args, phrases) -> None:
    first = str(pool["files"][0])
    before = snapshot(bundle)
    done = register_pool(bundle, pool["files"][0].parent, *(a.format(first=first) for a in args))
    done.assert_refused(*phrases)
    assert snapshot(bundle) == before


@pytest.mark.cli
def test_register_pool_refuses_what_is_not_a_pool(bundle, tmp_path, pool) -> None:
    before = snapshot(bundle)
    empty = tmp_path / "empty"
    empty.mkdir()
    register_pool(bundle, empty, "--shots", "1").assert_refused(str(empty), "no images")
    register_pool(bundle, tmp_path / "missing", "--shots", "1").assert_refused("no such folder")
    for flag in (["--shots", "2"], ["--calibrate"], ["--select", "random"]):
        shot = ["--shot", str(pool["files"][0])]
        done = run_main(main, "register", bundle, "--category", "candle", *shot, *flag)
        done.assert_refused("choose from a --pool DIR")
    assert snapshot(bundle) == before


# ---------------------------------------------------------- inctrl prompts make --select
@pytest.mark.cli
def test_prompts_make_coverage_selects_as_the_runtime_does(
    bundle, tiny_checkpoint, tmp_path
) -> None:
    data = tmp_path / "data"
    synthesize(data, seed=2, categories=1, images_per_category=6, size=64)
    good = data / "synth_fabric" / "train" / "good"
    out = tmp_path / "prompts"
    done = run_main(
        inctrl.cli.main, "prompts", "make", data, "--category", "synth_fabric",
        "--shots", "2", "--select", "coverage", "--out", out, "-c", tiny_checkpoint,
    )  # fmt: skip
    assert done.code == 0, done.err
    listing = json.loads(done.out)
    assert (listing["select"], listing["seed"]) == ("coverage", None)
    # The same selection, by the same rule, from the torch model's features ...
    model = InCTRL.from_checkpoint(tiny_checkpoint)
    files = list_images(good)
    with torch.no_grad():
        patches = model.encode(model.pixels(files)).patches.numpy()
    selection = coverage_selection(patches, 2)
    assert [Path(p).name for p in listing["images"]] == [files[i].name for i in selection.indices]
    assert listing["mean_residual"] == pytest.approx(selection.mean_residual, abs=1e-6)
    # ... and from the exported encoder of the same checkpoint.
    assert register_pool(bundle, good, "--shots", "2").code == 0
    names = [Path(p).name for p in bank_of(bundle).sources]
    assert names == [Path(p).name for p in listing["images"]]
    # random stays the evaluation's draw.
    drawn = run_prompts_make(data, "synth_fabric", 2, 3, tmp_path / "drawn", tiny_checkpoint)
    pool = normal_pool(load_samples([data]), "synth_fabric")
    assert drawn["images"] == [s.image_path for s in draw_prompts(pool, 2, 3, "synth_fabric")]
    assert (drawn["select"], drawn["seed"], drawn["mean_residual"]) == ("random", 3, None)


@pytest.mark.cli
def test_prompts_make_refuses_an_unknown_selection(tmp_path) -> None:
    done = run_main(
        inctrl.cli.main, "prompts", "make", tmp_path, "--category", "synth_fabric",
        "--shots", "2", "--select", "best", "--out", tmp_path / "out",
    )  # fmt: skip
    done.assert_refused("unknown --select 'best'")
    assert not (tmp_path / "out").exists()
