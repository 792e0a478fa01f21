"""Tiled scoring end to end: a bank registered with ``--tiles``, its queries scored, calibrated
and mapped tile by tile on the runtime, in parity with ``inctrl score --tiles``; the refusals;
and a defect the centre crop cuts off, seen by the tiles (the embedded demo model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl.cli.score import run_score as torch_score
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import decode
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.regions import NOT_INSPECTED, REGION, RegionRule
from inctrl_runtime.tiling import Tiling

from helpers import CATEGORY, bank_file, inctrl_run, random_images

pytestmark = pytest.mark.cli

FRAME = (520, 300)  # width, height: two 300-px tiles side by side, overlapping by 80 px
VIEWS = 3  # the two tiles and the whole view (the centred 300-px square)
GRID = "1x2+whole"
TILED = Tiling(1, 2, whole=True)


def frames(folder: Path, count: int, seed: int, size: tuple[int, int] = FRAME) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(random_images(count, seed=seed, size=(size[1], size[0]))):
        paths.append(folder / f"frame{i:02d}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def tiled_inputs(tmp_path_factory) -> dict[str, list[Path]]:
    root = tmp_path_factory.mktemp("tiled")
    return {
        "shots": frames(root / "shots", 2, seed=11),
        "normals": frames(root / "normals", 24, seed=12),
        "queries": frames(root / "queries", 5, seed=13),
    }


def register_tiled(bundle: Path, shots: list[Path], grid: str = GRID) -> None:
    shot_args = [arg for shot in shots for arg in ("--shot", shot)]
    outcome = inctrl_run("register", bundle, "--category", CATEGORY, "--tiles", grid, *shot_args)
    assert outcome.code == 0, outcome.err


def runtime_records(bundle: Path, *args) -> list[dict]:
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--json", *args)
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


@pytest.mark.parity
def test_tiled_scores_match_the_torch_side_tile_by_tile_and_frame_by_frame(
    bundle: Path, tiny_checkpoint: Path, tiled_inputs: dict
) -> None:
    shots, queries = tiled_inputs["shots"], tiled_inputs["queries"]
    register_tiled(bundle, shots)
    bank = NumpyBank.load(bank_file(bundle))
    assert (bank.tiling, bank.frame_size, bank.shots) == (TILED, FRAME, 2)
    assert bank.patches.shape[1] == 2 * VIEWS * 225  # k x T views' patches
    ours = runtime_records(bundle, "--batch-size", 2, *queries)
    torch = torch_score(tiny_checkpoint, CATEGORY, shots, queries, tiles=GRID, batch_size=3)
    assert len(ours) == len(torch) == len(queries)
    for mine, theirs in zip(ours, torch, strict=True):
        for name in ("score", "holistic_score", "image_residual_score", "text_score",
                     "max_patch_residual"):  # fmt: skip
            assert mine[name] == pytest.approx(theirs[name], abs=1e-4), name
        assert (
            np.abs(np.subtract(mine["patch_residual_map"], theirs["patch_residual_map"])).max()
            < 1e-4
        )
        assert len(mine["patch_residual_map"]) == VIEWS * 225
        assert mine["decisive_tile"] == theirs["decisive_tile"]
        assert mine["tiling"] == theirs["tiling"]
        assert mine["tiling"]["boxes"] == [[0, 0, 300, 300], [220, 0, 520, 300], [110, 0, 410, 300]]
        assert (mine["frame_size"], mine["inspected_fraction"]) == ([520, 300], 1.0)
        assert mine["regions"] is None  # not calibrated
    # view by view: each tile scored as an image of its own against the two tiles of the
    # prompts, the whole view against the prompts' whole views; the frame's score the largest
    # patch residual of its views
    detector = Detector.open(bundle)
    layout = TILED.layout(*FRAME, 240)
    assert bank.groups == ((0, 1), (2,))
    crops = [layout.crops(Image.open(image)) for image in (*shots, *queries)]
    prompts, query_views = crops[: len(shots)], crops[len(shots) :]
    residuals = np.zeros((len(queries), VIEWS))
    for group in bank.groups:
        alone = detector.reference([views[t] for views in prompts for t in group])
        scored = detector.score_arrays(
            CATEGORY, [views[t] for views in query_views for t in group], bank=alone
        )
        residuals[:, list(group)] = scored.max_patch_residual.reshape(len(queries), len(group))
    assert np.abs(residuals.max(axis=1) - [r["score"] for r in ours]).max() < 1e-5
    decisive = residuals.argmax(axis=1)
    assert decisive.tolist() == [r["decisive_tile"] for r in ours]


def test_a_frame_s_score_does_not_depend_on_its_batch(bundle: Path, tiled_inputs: dict) -> None:
    register_tiled(bundle, tiled_inputs["shots"])
    queries = tiled_inputs["queries"]
    one = runtime_records(bundle, "--batch-size", 1, *queries)
    five = runtime_records(bundle, "--batch-size", 5, *queries)
    assert np.abs(np.subtract([r["score"] for r in one], [r["score"] for r in five])).max() < 1e-5


def test_calibration_regions_and_masks_of_a_tiled_category(
    bundle: Path, tiled_inputs: dict, tmp_path: Path
) -> None:
    register_tiled(bundle, tiled_inputs["shots"])
    normals = tiled_inputs["normals"]
    outcome = inctrl_run("calibrate", bundle, "--category", CATEGORY, *normals)
    assert outcome.code == 0, outcome.err
    calibration = NumpyBank.load(bank_file(bundle)).calibration
    # the calibration keeps frame-level scores and map maxima
    again = Detector.open(bundle).score_arrays(CATEGORY, normals)
    assert np.abs(calibration.scores - np.sort(again.score)).max() < 1e-5
    assert np.abs(calibration.map_maxima - np.sort(again.max_patch_residual)).max() < 1e-5
    masks, maps = tmp_path / "masks", tmp_path / "maps"
    records = runtime_records(bundle, "--fpr", 0.25, "--region-fpr", 0.5, "--masks", masks,
                              "--heatmaps", maps, *tiled_inputs["queries"])  # fmt: skip
    assert all(r["p_value"] is not None and r["regions"] is not None for r in records)
    assert sum(len(r["regions"]) for r in records) > 0  # at 0.5, regions do occur
    rule = RegionRule.at(calibration.map_maxima, 0.5)
    for record in records:
        mask = np.asarray(Image.open(record["mask"]))
        assert mask.shape == (300, 520) and not (mask == NOT_INSPECTED).any()  # all inspected
        # a frame has a region exactly when one of its tiles has a patch above the threshold
        hot = max(record["patch_residual_map"]) > rule.threshold
        assert (len(record["regions"]) > 0) == hot == (mask == REGION).any()
        for region in record["regions"]:
            x0, y0, x1, y1 = region["box"]
            assert (mask[y0:y1, x0:x1] == REGION).sum() >= region["area"]
        assert Image.open(record["heatmap"]).size[0] > 0


def test_refusals_of_tiled_scoring(
    bundle: Path, tiled_inputs: dict, inputs: dict, tmp_path: Path
) -> None:
    shots, queries = tiled_inputs["shots"], tiled_inputs["queries"]
    register_tiled(bundle, shots)
    before = bank_file(bundle).read_bytes()
    listed = json.loads(inctrl_run("info", bundle, "--json").out)["categories"][CATEGORY]
    assert listed["bank"]["tiling"] == {"rows": 1, "columns": 2, "overlap": 0.125,
                                        "whole": True, "frame_size": [520, 300]}  # fmt: skip
    assert "1x2+whole over 520 x 300 frames" in inctrl_run("info", bundle).out
    # a query of another frame size: one line naming it
    (other,) = frames(tmp_path / "other", 1, seed=20, size=(600, 300))
    refused = inctrl_run("score", bundle, "--category", CATEGORY, queries[0], other)
    refused.assert_refused(str(other), "a 600 x 300 frame", "520 x 300", "the bank of")
    # another grid than the bank's
    inctrl_run("score", bundle, "--category", CATEGORY, "--tiles", "2x2", *queries
               ).assert_refused("--tiles 2x2", "registered with 1x2+whole tiles")  # fmt: skip
    inctrl_run("score", bundle, "--category", CATEGORY, "--tiles", "1x2", *queries
               ).assert_refused("--tiles 1x2", "give --tiles 1x2+whole")  # fmt: skip
    # a grid too fine for the frame, and one whose square tiles cannot cover it
    fine = inctrl_run("register", bundle, "--category", CATEGORY, "--tiles", "2x3", *[
        arg for shot in shots for arg in ("--shot", shot)])  # fmt: skip
    fine.assert_refused("smaller than the model's 240-px input")
    coarse = inctrl_run("register", bundle, "--category", CATEGORY, "--tiles", "1x1", *[
        arg for shot in shots for arg in ("--shot", shot)])  # fmt: skip
    coarse.assert_refused("cannot cover a 520 x 300 frame", "--tiles 1x2")
    assert bank_file(bundle).read_bytes() == before  # nothing written by a refusal
    # prompts of two frame sizes (the grid fits both)
    (wider,) = frames(tmp_path / "wider", 1, seed=22, size=(560, 300))
    mixed = inctrl_run("register", bundle, "--category", CATEGORY, "--tiles", GRID,
                       "--shot", shots[0], "--shot", wider)  # fmt: skip
    mixed.assert_refused(str(wider), "a 560 x 300 frame, the first prompt's is 520 x 300")
    # the Python API: pixels given already preprocessed cannot be tiled
    detector = Detector.open(bundle)
    with pytest.raises(InputError, match="is tiled \\(1x2\\+whole\\): give frames"):
        detector.results(CATEGORY, detector.pixels(queries[:1]))
    # --tiles on an untiled bank, and a badly written grid
    Detector.open(bundle).register(CATEGORY, inputs["shots"])
    inctrl_run("score", bundle, "--category", CATEGORY, "--tiles", GRID, *queries
               ).assert_refused("registered untiled")  # fmt: skip
    inctrl_run("score", bundle, "--category", CATEGORY, "--tiles", "two", *queries
               ).assert_refused("ROWSxCOLUMNS")  # fmt: skip


def test_a_tiled_bank_from_a_pool_selects_by_the_coverage_of_the_tiles(
    bundle: Path, tiled_inputs: dict, tmp_path: Path
) -> None:
    pool = tmp_path / "pool"
    pool.mkdir()
    for image in tiled_inputs["normals"][:12]:
        (pool / image.name).write_bytes(image.read_bytes())
    outcome = inctrl_run("register", bundle, "--category", CATEGORY, "--pool", pool, "--shots",
                         2, "--tiles", GRID, "--calibrate")  # fmt: skip
    assert outcome.code == 0, outcome.err
    bank = NumpyBank.load(bank_file(bundle))
    assert bank.tiling == TILED and bank.shots == 2 and bank.calibration.n == 6
    # by hand: the six pool images the selection saw, each image's three views' patches side by
    # side, greedy coverage
    from inctrl_runtime.selection import coverage_selection, split_pool

    part, _ = split_pool(sorted(pool.iterdir()), 0, CATEGORY, shots=2)
    detector = Detector.open(bundle)
    patches = detector.encode(np.concatenate(
        [decode(path, tiling=TILED).pixels() for path in part]))["patches"]  # fmt: skip
    by_image = patches.reshape(len(part), VIEWS, 3, 225, -1).transpose(0, 2, 1, 3, 4)
    chosen = coverage_selection(by_image.reshape(len(part), 3, VIEWS * 225, -1), 2).indices
    assert list(bank.sources) == [str(part[i]) for i in chosen]


def test_torch_side_tiles_refuse_query_viewsof_another_size(
    tiny_checkpoint: Path, tiled_inputs: dict, tmp_path: Path
) -> None:
    (other,) = frames(tmp_path / "other", 1, seed=21, size=(600, 300))
    with pytest.raises(
        InputError, match="a 600 x 300 frame; its tiles are compared with the first --shot"
    ):
        torch_score(tiny_checkpoint, CATEGORY, tiled_inputs["shots"], [other], tiles=GRID)


@pytest.mark.slow
def test_a_defect_the_centre_crop_cuts_off_is_seen_only_by_the_tiles(tmp_path: Path) -> None:
    """The embedded demo model, a 480 x 320 wood frame: a small stain in the left band the
    centre crop drops. Untiled, the frame scores as its clean twin (the model never sees it);
    tiled (1x2), its score rises, the left tile decides, and the stitched map peaks on it."""
    from inctrl.synth import render

    size = (480, 320)
    for index in range(3):
        Image.fromarray(render("synth_wood", "train", "good", index, size=size).image).save(
            tmp_path / f"good{index}.png"
        )
    clean = render("synth_wood", "test", "good", 0, size=size).image
    stained = clean.copy()
    rows, cols = np.mgrid[0:320, 0:480]
    spot = (rows - 150) ** 2 + (cols - 36) ** 2 <= 14**2  # 29 px across, x in [22, 50]
    stained[spot] = (40, 90, 170)
    Image.fromarray(clean).save(tmp_path / "clean.png")
    Image.fromarray(stained).save(tmp_path / "stained.png")
    shots = [tmp_path / "good0.png", tmp_path / "good1.png"]
    queries = [tmp_path / "clean.png", tmp_path / "stained.png"]
    whole = torch_score(None, "synth_wood", shots, queries)
    assert whole[1]["score"] == pytest.approx(whole[0]["score"], abs=1e-6)  # never seen
    tiled = torch_score(None, "synth_wood", shots, queries, tiles="1x2")
    assert tiled[1]["score"] > tiled[0]["score"] + 0.02
    assert tiled[1]["decisive_tile"] == 0
    layout = decode(queries[1], tiling=Tiling(1, 2)).layout
    stitched = layout.map(np.asarray(tiled[1]["patch_residual_map"], np.float32))
    peak_y, peak_x = np.unravel_index(np.argmax(stitched), stitched.shape)
    assert abs(peak_x - 36) <= 24 and abs(peak_y - 150) <= 24
    # the region rule that a clean frame's maximum calibrates flags the stain, and only it
    rule = RegionRule(np.array([tiled[0]["max_patch_residual"]], np.float32), 0.5,
                      tiled[0]["max_patch_residual"])  # fmt: skip
    regions = layout.regions(rule, np.asarray(tiled[1]["patch_residual_map"], np.float32))
    assert regions and regions[0].box[0] <= 36 < regions[0].box[2]
