"""The lean runtime: no torch, checked bundles, few-shot state, one-line refusals, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines.ort import ProviderFallbackWarning
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.manifest import MANIFEST
from inctrl_runtime.references import NumpyBank

from helpers import random_images, run_command, run_inctrl

RUN = "inctrl_runtime.cli"


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, list[Path]]:
    """Prompt and query PNG files of assorted sizes."""
    folder = tmp_path_factory.mktemp("pictures")
    files = {"shots": [], "queries": []}
    for role, seed, count in (("shots", 50, 2), ("queries", 60, 3)):
        for i in range(count):
            (array,) = random_images(1, seed=seed + i, size=(250 + 20 * i, 300))
            path = folder / f"{role}_{i}.png"
            Image.fromarray(array).save(path)
            files[role].append(path)
    return files


def one_line_error(done: subprocess.CompletedProcess, text: str) -> None:
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if not line.startswith("note:")]
    assert len(errors) == 1 and errors[0].startswith("error:") and text in errors[0], done.stderr


# Blocks torch, torchvision, open_clip and the torch-side packages for the code that follows.
_NO_TORCH = textwrap.dedent(
    """
    import importlib.abc, sys
    BLOCKED = ("torch", "torchvision", "open_clip", "inctrl", "inctrl_export", "safetensors")
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    """
)


@pytest.mark.cli
def test_runtime_scores_with_torch_unimportable(bundle: Path, pictures: dict) -> None:
    shots = [str(p) for p in pictures["shots"]]
    queries = [str(p) for p in pictures["queries"]]
    code = _NO_TORCH + textwrap.dedent(
        f"""
        import json
        import inctrl_runtime
        from inctrl_runtime.cli import main
        det = inctrl_runtime.Detector.open({str(bundle)!r})
        det.register("candle", {shots!r})
        results = det.results("candle", {queries!r}, batch_size=2)
        results[0].heatmap()
        assert not any(m.split(".")[0] in BLOCKED for m in sys.modules), sorted(sys.modules)
        print(json.dumps([r.record() for r in results]))
        main(["score", {str(bundle)!r}, "--category", "candle", "--batch-size", "2", "--json",
              *{queries!r}])
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    api, cli = (json.loads(line) for line in done.stdout.strip().splitlines())
    assert [r["image"] for r in api] == queries
    assert api == cli


@pytest.mark.cli
def test_cli_round_trip_matches_inctrl_score(
    tiny_checkpoint: Path, pictures: dict, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    export = ["onnx", "-c", str(tiny_checkpoint), "--category", "candle", "--out", str(bundle)]
    assert run_command("inctrl_export.cli", *export).returncode == 0
    shots = [arg for p in pictures["shots"] for arg in ("--shot", str(p))]
    queries = [str(p) for p in pictures["queries"]]
    done = run_command(RUN, "register", str(bundle), "--category", "candle", *shots)
    assert done.returncode == 0, done.stderr
    assert (bundle / "references" / "candle.npz").is_file()
    runtime = run_command(RUN, "score", str(bundle), "--category", "candle", "--json", *queries)
    assert runtime.returncode == 0, runtime.stderr
    torch_side = run_inctrl(
        "score", "-c", str(tiny_checkpoint), "--category", "candle", *shots, "--json", *queries
    )
    assert torch_side.returncode == 0, torch_side.stderr
    ours, theirs = json.loads(runtime.stdout), json.loads(torch_side.stdout)
    assert [list(r) for r in ours] == [list(r) for r in theirs]  # same keys, same order
    assert list(ours[0]) == [
        "image", "score", "holistic_score", "image_residual_score", "text_score",
        "max_patch_residual", "p_value", "threshold", "anomalous", "frame_size",
        "inspected_fraction", "region_threshold", "regions", "tiling", "decisive_tile",
        "drift", "patch_residual_map",
    ]  # fmt: skip
    for a, b in zip(ours, theirs, strict=True):
        assert a["image"] == b["image"]
        nothing = ("p_value", "threshold", "anomalous", "region_threshold", "regions", "tiling",
                   "decisive_tile", "drift")  # fmt: skip
        assert all(a[key] is None and b[key] is None for key in nothing)  # not calibrated
        assert a["frame_size"] == b["frame_size"] and a["inspected_fraction"] > 0
        for key in (k for k in a if k not in ("image", "frame_size", *nothing)):
            np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-4, err_msg=key)
    with_shots = run_command(
        RUN, "score", str(bundle), "--category", "candle", *shots[:2], "--json", *queries
    )
    first_shot_only = json.loads(with_shots.stdout)
    assert first_shot_only[0]["score"] != ours[0]["score"]  # --shot replaced the bank


@pytest.mark.cli
def test_register_then_score_and_heatmaps(bundle: Path, pictures: dict, tmp_path: Path) -> None:
    detector = Detector.open(bundle)
    bank = detector.register("metal_nut", pictures["shots"])
    saved = NumpyBank.load(bundle / "references" / "metal_nut.npz")
    np.testing.assert_array_equal(saved.patches, bank.patches)
    assert saved.shots == 2 and saved.sources == tuple(str(p) for p in pictures["shots"])
    assert len(saved.digests) == 2 and saved.encoder_sha256 == detector.bundle.encoder_sha256
    results = detector.results("metal_nut", pictures["queries"])
    assert [r.image for r in results] == [str(p) for p in pictures["queries"]]
    width, height = Image.open(pictures["queries"][0]).size
    assert results[0].framing.width == width and results[0].framing.height == height
    overlay = results[0].heatmap(caption=False)  # the whole frame, and the colour bar beside it
    assert overlay.size == (width + 64, height) and overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 0
    captioned = np.asarray(results[0].heatmap())  # the score written on a strip under the map
    assert captioned.shape == (height + 20, width + 64, 3) and captioned[height:].std() > 0
    np.testing.assert_array_equal(captioned[:height], np.asarray(overlay))
    results[1].save_heatmap(tmp_path / "one.png")
    size = Image.open(pictures["queries"][1]).size
    assert Image.open(tmp_path / "one.png").size == (size[0] + 64, size[1] + 20)
    maps = tmp_path / "maps"
    args = ["score", str(bundle), "--category", "metal_nut", "--heatmaps", str(maps), "--json"]
    done = run_command(RUN, *args, *map(str, pictures["queries"]))
    assert done.returncode == 0, done.stderr
    records = json.loads(done.stdout)
    assert all(Path(r["heatmap"]).is_file() for r in records) and len(list(maps.iterdir())) == 3


@pytest.mark.cli
def test_heatmaps_are_drawn_without_reading_the_images_again(
    bundle: Path, pictures: dict, tmp_path: Path, image_reads
) -> None:
    """The runtime opens and decodes each image once, heatmaps on, over several batches."""
    from inctrl_runtime.cli.score import run_score

    queries = [Path(shutil.copy(p, tmp_path / p.name)) for p in pictures["queries"]]
    detector = Detector.open(bundle)
    results = detector.results("candle", queries, detector.reference(pictures["shots"]))
    expected = np.asarray(results[0].heatmap())
    for path in queries:
        path.write_bytes(b"not an image any more")
    np.testing.assert_array_equal(np.asarray(results[0].heatmap()), expected)
    results[0].save_heatmap(tmp_path / "map.png")

    for array, path in zip(random_images(3, seed=90, size=(250, 300)), queries, strict=True):
        Image.fromarray(array).save(path)
    image_reads.opened.clear()
    image_reads.decoded = 0
    batches = run_score(bundle, "candle", queries, pictures["shots"][:1], batch_size=2,
                        heatmaps=tmp_path / "m")  # fmt: skip
    records = [record for batch in batches for record in batch]
    assert all(Path(r["heatmap"]).is_file() for r in records)
    assert sorted(image_reads.opened) == sorted(map(str, [*queries, pictures["shots"][0]]))
    assert image_reads.decoded == len(queries) + 1  # each image opened and decoded once


@pytest.mark.parity
def test_manifest_preprocessing_matches_torchvision(bundle: Path) -> None:
    detector = Detector.open(bundle)
    reference = transforms.Compose(
        [
            transforms.Resize(240, InterpolationMode.BICUBIC),
            transforms.CenterCrop(240),
            lambda image: image.convert("RGB"),
            transforms.ToTensor(),
            transforms.Normalize(detector.bundle.preprocessing.mean,
                                 detector.bundle.preprocessing.std),
        ]
    )  # fmt: skip
    arrays = random_images(3, seed=5, size=[(260, 300), (500, 241), (251, 1000)], channels=4)
    for mode, array in zip(("RGB", "L", "RGBA"), arrays, strict=True):
        image = Image.fromarray(array, "RGBA").convert(mode)
        expected = reference(image).numpy()
        np.testing.assert_allclose(detector.pixels([image])[0], expected, rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------ refusals
@pytest.mark.cli
def test_tampered_encoder_is_refused(bundle: Path, pictures: dict) -> None:
    encoder = bundle / "encoder.onnx"
    data = bytearray(encoder.read_bytes())
    data[len(data) // 2] ^= 0x01
    encoder.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="encoder.onnx: sha256 differs"):
        Detector.open(bundle)
    query = str(pictures["queries"][0])
    one_line_error(run_command(RUN, "score", str(bundle), "--category", "candle", query),
                   "sha256 differs")  # fmt: skip


@pytest.mark.unit
def test_other_schema_version_is_refused(bundle: Path) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["schema_version"] = 99
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 99"):
        Bundle.open(bundle)


@pytest.mark.cli
@pytest.mark.parametrize("damage", ["missing", "truncated", "no manifest", "garbage manifest"])
def test_damaged_bundle_is_refused(bundle: Path, damage: str) -> None:
    if damage == "missing":
        (bundle / "head.onnx").unlink()
    elif damage == "truncated":
        (bundle / "priors.json").write_text("{}")
    elif damage == "no manifest":
        (bundle / MANIFEST).unlink()
    else:
        (bundle / MANIFEST).write_text("{not json")
    done = run_command(RUN, "register", str(bundle), "--category", "candle", "--shot", "a.png")
    assert done.returncode == 2
    with pytest.raises(BundleError):
        Bundle.open(bundle)


@pytest.mark.cli
def test_unknown_category_writes_nothing(bundle: Path, pictures: dict) -> None:
    shots = [arg for p in pictures["shots"] for arg in ("--shot", str(p))]
    done = run_command(RUN, "register", str(bundle), "--category", "widget", *shots)
    one_line_error(done, "'widget' has no text prior")
    assert not (bundle / "references").exists()


@pytest.mark.cli
def test_empty_prompt_set_is_refused(bundle: Path) -> None:
    one_line_error(run_command(RUN, "register", str(bundle), "--category", "candle"), "no --shot")
    with pytest.raises(InputError, match="no prompt images"):
        Detector.open(bundle).register("candle", [])


@pytest.mark.cli
def test_corrupt_image_writes_nothing(bundle: Path, pictures: dict, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    detector = Detector.open(bundle)
    detector.register("candle", pictures["shots"])
    before = (bundle / "references" / "candle.npz").read_bytes()
    args = ["--category", "candle", "--shot", str(pictures["shots"][0]), "--shot", str(broken)]
    one_line_error(run_command(RUN, "register", str(bundle), *args), "broken.png")
    assert (bundle / "references" / "candle.npz").read_bytes() == before
    maps = tmp_path / "maps"
    score = ["score", str(bundle), "--category", "candle", "--heatmaps", str(maps)]
    one_line_error(run_command(RUN, *score, str(pictures["queries"][0]), str(broken)),
                   "broken.png")  # fmt: skip
    assert not maps.exists()
    assert sorted(p.name for p in (bundle / "references").iterdir()) == ["candle.npz"]


@pytest.mark.cli
def test_unregistered_category_says_how_to_register(bundle: Path, pictures: dict) -> None:
    done = run_command(RUN, "score", str(bundle), "--category", "candle",
                       str(pictures["queries"][0]))  # fmt: skip
    one_line_error(done, "inctrl-run register")


@pytest.mark.unit
def test_bank_of_another_bundle_is_refused(
    bundle: Path, tiny_model, pictures: dict, tmp_path: Path
) -> None:
    from inctrl_export.bundle import export_bundle

    other = tmp_path / "fp16"
    export_bundle(other, categories=["candle"], precision="fp16", verify=False, model=tiny_model)
    Detector.open(other).register("candle", pictures["shots"])
    shutil.copytree(other / "references", bundle / "references")
    with pytest.raises(InputError, match="registered with another encoder"):
        Detector.open(bundle).results("candle", pictures["queries"])


@pytest.mark.unit
def test_missing_provider_fails_or_warns(bundle: Path) -> None:
    with pytest.raises(InputError, match="CUDAExecutionProvider"):
        Detector.open(bundle, device="cuda")
    with pytest.warns(ProviderFallbackWarning, match="running on the CPU instead"):
        detector = Detector.open(bundle, device="cuda", strict=False)
    assert detector.device == "cpu"
    with pytest.raises(InputError, match="unknown device"):
        Detector.open(bundle, device="gpu")


@pytest.mark.unit
def test_threads_are_set(bundle: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        detector = Detector.open(bundle, threads=1)
    assert detector.encoder_engine.session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(InputError, match="threads"):
        Detector.open(bundle, threads=0)


@pytest.mark.unit
def test_category_names_cannot_carry_a_newline(bundle: Path) -> None:
    with pytest.raises(InputError, match="not usable"):
        Bundle.open(bundle).reference_path("candle\n")


@pytest.mark.unit
def test_registered_bank_is_reread_only_when_its_file_changes(bundle: Path, pictures: dict):
    first, second = Detector.open(bundle), Detector.open(bundle)
    first.register("candle", pictures["shots"])
    assert second.registered("candle") is second.registered("candle")  # read once
    first.register("candle", pictures["shots"][:1])
    assert second.registered("candle").shots == 1  # another process registered anew
