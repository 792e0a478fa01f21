"""The `inctrl score` contract: JSON schema and order, table output, exit code 2 on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from inctrl import InCTRL, get_config
from inctrl.checkpoint import ours_to_authors
from inctrl.cli.score import run_score
from inctrl_runtime.errors import InputError
from inctrl_runtime.results import SCORE_FIELDS

from helpers import perturb_heads, random_images, run_inctrl

pytestmark = pytest.mark.cli

# The image, every scalar head output, the decision (null: the torch side is never calibrated),
# then the patch map.
KEYS = [
    "image", *SCORE_FIELDS[:-1], "p_value", "threshold", "anomalous", "frame_size",
    "inspected_fraction", "region_threshold", "regions", "tiling", "decisive_tile", "drift",
    "patch_residual_map",
]  # fmt: skip


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A tiny checkpoint (ours and the authors' layout) and a few PNG images."""
    root = tmp_path_factory.mktemp("cli")
    model = perturb_heads(InCTRL(get_config("tiny")))
    model.save(root / "tiny.safetensors")
    torch.save({"model_state": ours_to_authors(model.state_dict())}, root / "tiny_authors.pyth")
    for i, array in enumerate(random_images(5, seed=7)):
        Image.fromarray(array).save(root / f"img{i}.png")
    return root


def test_json_contract_and_values(workspace) -> None:
    queries = ["img4.png", "img2.png", "img3.png"]  # not sorted: order must be kept
    result = run_inctrl(
        "score",
        "--checkpoint",
        "tiny.safetensors",
        "--category",
        "metal_nut",
        "--shot",
        "img0.png",
        "--shot",
        "img1.png",
        "--batch-size",
        "2",
        "--json",
        *queries,
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout)
    assert [r["image"] for r in records] == queries
    for record in records:
        assert list(record) == KEYS
        assert record["p_value"] is record["threshold"] is record["anomalous"] is None
        assert len(record["patch_residual_map"]) == 225
        assert all(isinstance(v, float) for v in record["patch_residual_map"])
    # Same numbers as the Python API.
    model = InCTRL.from_checkpoint(workspace / "tiny.safetensors")
    bank = model.reference([workspace / "img0.png", workspace / "img1.png"])
    scores = model.score([workspace / q for q in queries], bank, model.text_prior("metal_nut"))
    for b, record in enumerate(records):
        for name in SCORE_FIELDS:
            expected = getattr(scores, name)[b]
            assert torch.allclose(torch.tensor(record[name]), expected, atol=1e-6), name


def test_authors_checkpoint_gives_the_same_scores(workspace) -> None:
    common = dict(
        category="candle", shot_images=[workspace / "img0.png"], queries=[workspace / "img3.png"]
    )
    ours = run_score(workspace / "tiny.safetensors", **common)
    authors = run_score(workspace / "tiny_authors.pyth", **common)
    assert ours[0]["score"] == pytest.approx(authors[0]["score"], abs=1e-7)


def test_table_output_and_heatmaps(workspace, tmp_path) -> None:
    result = run_inctrl(
        "score",
        "-c",
        "tiny.safetensors",
        "--category",
        "candle",
        "-s",
        "img0.png",
        "--heatmaps",
        str(tmp_path / "maps"),
        "img2.png",
        "img3.png",
        cwd=workspace,
    )
    assert result.returncode == 0, result.stderr
    assert "img2.png" in result.stdout and "score" in result.stdout
    maps = sorted((tmp_path / "maps").iterdir())
    assert [m.name for m in maps] == ["img2.png", "img3.png"]  # named after their images
    with Image.open(maps[0]) as heatmap, Image.open(workspace / "img2.png") as image:
        # the whole frame (drawn at least 256 px), the colour bar, the caption
        scale = max(1, 256 / max(image.size))
        width, height = (round(side * scale) for side in image.size)
        assert heatmap.size == (width + 64, height + 20) and heatmap.mode == "RGB"


def test_heatmaps_are_drawn_without_reading_the_images_again(workspace, tmp_path, image_reads):
    """The torch side opens and decodes each image once, heatmaps on, over several batches."""
    queries = [workspace / "img2.png", workspace / "img3.png", workspace / "img1.png"]
    shots = [workspace / "img0.png"]
    records = run_score(workspace / "tiny.safetensors", "candle", shots, queries, batch_size=2,
                        heatmaps=tmp_path / "maps")  # fmt: skip
    names = ["img2.png", "img3.png", "img1.png"]
    assert [Path(r["heatmap"]).name for r in records] == names
    assert image_reads.names == ["img0.png", "img1.png", "img2.png", "img3.png"]  # read once
    assert image_reads.decoded == 4  # and decoded once each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "tiny.safetensors", "-s", "img0.png", "img1.png"], "no --category"),
        (["-c", "tiny.safetensors", "--category", "c", "img1.png"], "no --shot"),
        (["-c", "tiny.safetensors", "--category", "c", "-s", "img0.png"], "no query images"),
        (["-c", "tiny.safetensors", "--category", "c", "-s", "img0.png", "nope.png"], "nope.png"),
        (["-c", "tiny.safetensors", "--category", "c", "-s", "gone.png", "img1.png"], "gone.png"),
        (["-c", "missing.pyth", "--category", "c", "-s", "img0.png", "img1.png"], "missing.pyth"),
        (["-c", "garbage.pyth", "--category", "c", "-s", "img0.png", "img1.png"], "garbage.pyth"),
        (["-c", "wrongkeys.pyth", "--category", "c", "-s", "img0.png", "img1.png"], "missing key"),
        (
            ["-c", "tiny.safetensors", "--category", "c", "-s", "img0.png", "corrupt.png"],
            "corrupt.png",
        ),
        (
            [
                "-c",
                "tiny.safetensors",
                "--category",
                "c",
                "-s",
                "img0.png",
                "--batch-size",
                "0",
                "img1.png",
            ],
            "--batch-size",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(workspace, args, message) -> None:
    (workspace / "garbage.pyth").write_bytes(b"\x00not a checkpoint" * 10)
    (workspace / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"junk" * 20)
    if not (workspace / "wrongkeys.pyth").exists():
        state = torch.load(workspace / "tiny_authors.pyth", weights_only=True)["model_state"]
        del state["diff_head.bn1.running_mean"]
        torch.save(state, workspace / "wrongkeys.pyth")
    result = run_inctrl("score", "--json", *args, cwd=workspace)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr


def test_data_synth_command(tmp_path) -> None:
    args = ["data", "synth", "--categories", "2", "--images-per-category", "4", "--size", "64"]
    result = run_inctrl(*args, "--out", "synth", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert list(summary["categories"]) == ["synth_fabric", "synth_washer"]
    assert len(list((tmp_path / "synth" / "synth_fabric" / "train" / "good").iterdir())) == 4
    again = run_inctrl(*args, "--out", "synth", cwd=tmp_path)
    assert again.returncode == 2
    assert again.stderr.startswith("error: synth: folder is not empty")
    assert len(again.stderr.strip().splitlines()) == 1


def test_a_saved_bank_replaces_the_shots(workspace, tmp_path) -> None:
    model = InCTRL.from_checkpoint(workspace / "tiny.safetensors")
    model.reference([workspace / "img0.png", workspace / "img1.png"]).save(tmp_path / "b.st")
    common = dict(checkpoint=workspace / "tiny.safetensors", category="candle")
    queries = [workspace / "img3.png"]
    from_shots = run_score(
        shot_images=[workspace / "img0.png", workspace / "img1.png"], queries=queries, **common
    )
    from_bank = run_score(shot_images=[], queries=queries, bank_file=tmp_path / "b.st", **common)
    assert from_bank == from_shots
    with pytest.raises(InputError, match="either --shot images or --bank"):
        run_score(shot_images=queries, queries=queries, bank_file=tmp_path / "b.st", **common)
    other = InCTRL(get_config("demo")).reference([workspace / "img0.png"])
    other.save(tmp_path / "other.st")
    with pytest.raises(InputError, match="does not fit this model"):
        run_score(shot_images=[], queries=queries, bank_file=tmp_path / "other.st", **common)
