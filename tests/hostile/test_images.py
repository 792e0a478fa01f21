"""Hostile images: a decompression bomb and a strip that the resize would blow up are refused in
one line, exit 2, from their size alone, on every path that reads images; elongated images
within the limits still score; a single image where a list is expected is one image."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import inctrl.cli
import inctrl_runtime.cli
from inctrl import InCTRL
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import (
    MAX_RESIZED_PIXELS,
    check_size,
    image_sequence,
    load_image,
    model_view,
    preprocess_many,
)

from helpers import CATEGORY, random_images, run_main, snapshot

STRIP = np.zeros((1, 50000), dtype=np.uint8)  # 50000 x 1: resized to 12000000 x 240
# Line-scan strips (H, W): within the limits, they score like any image.
ELONGATED = [(512, 16384), (100, 8000), (8000, 100)]


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A 388 kB PNG of 20000 x 20000 pixels: more than twice Pillow's limit."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("L", (20000, 20000)).save(path)
    return path


@pytest.fixture(scope="module")
def strip_png(tmp_path_factory) -> Path:
    """A 129-byte PNG of 50000 x 1 pixels, within Pillow's limit."""
    path = tmp_path_factory.mktemp("strip") / "strip.png"
    Image.fromarray(STRIP).save(path)
    return path


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "good.png"
    Image.fromarray(random_images(1, seed=30)[0]).save(path)
    return path


def never_decoded(monkeypatch) -> None:
    """Make decoding a file's pixels fail the test: a refusal must come from the header."""

    def load(self):
        raise AssertionError(f"{self.filename} was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)


# ------------------------------------------------------------------- every command line path
COMMANDS = {
    "inctrl score, a shot": (inctrl.cli.main, ["score", "--shot", "{bad}", "{good}"]),
    "inctrl score, a query": (inctrl.cli.main, ["score", "--shot", "{good}", "{bad}"]),
    "inctrl-run score, a shot": (
        inctrl_runtime.cli.main,
        ["score", "{bundle}", "--shot", "{bad}", "{good}"],
    ),
    "inctrl-run score, a query": (
        inctrl_runtime.cli.main,
        ["score", "{bundle}", "--shot", "{good}", "{bad}"],
    ),
    "inctrl-run register": (inctrl_runtime.cli.main, ["register", "{bundle}", "--shot", "{bad}"]),
}


@pytest.mark.cli
@pytest.mark.parametrize("image", ["bomb", "strip_png"])
@pytest.mark.parametrize("command", COMMANDS.values(), ids=COMMANDS)
def test_too_many_pixels_is_one_line_on_every_path(
    command, image: str, request, bundle: Path, good: Path
) -> None:
    # inctrl score runs the embedded demo model: no checkpoint to load.
    main, template = command
    bad = request.getfixturevalue(image)
    names = {"bad": bad, "good": good, "bundle": bundle}
    args = [arg.format(**names) for arg in template]
    before, images_before = snapshot(bundle), snapshot(good.parent)
    done = run_main(main, *args, "--category", CATEGORY)
    done.assert_refused(str(bad), "too many pixels")
    assert snapshot(bundle) == before
    assert snapshot(good.parent) == images_before  # no heatmap, no temporary, nothing


# ----------------------------------------------------------------- the guard, source by source
@pytest.mark.unit
def test_bomb_is_refused_from_its_header(bomb: Path, monkeypatch) -> None:
    never_decoded(monkeypatch)
    with pytest.raises(InputError, match="too many pixels, a possible decompression bomb") as info:
        load_image(bomb)
    assert str(bomb) in str(info.value) and "400000000 pixels" in str(info.value)


@pytest.mark.unit
def test_strip_png_is_refused_before_it_is_decoded(strip_png: Path, monkeypatch) -> None:
    assert strip_png.stat().st_size < 200
    never_decoded(monkeypatch)
    with pytest.raises(InputError) as info:
        load_image(strip_png)
    message = str(info.value)
    assert message.startswith(f"{strip_png}: too many pixels once resized")
    assert "50000 x 1 becomes 12000000 x 240" in message
    assert f"{MAX_RESIZED_PIXELS:,}" in message


@pytest.mark.unit
def test_npy_bomb_is_held_to_pillows_limit(tmp_path: Path) -> None:
    # 400 MB of pixels that are never read: the file is sparse, and the refusal comes from the
    # .npy header, as Pillow's does from a PNG's.
    path = tmp_path / "bomb.npy"
    np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(20000, 20000)).flush()
    with pytest.raises(InputError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: too many pixels (20000 x 20000 = 400,000,000")
    assert f"Pillow's limit of {Image.MAX_IMAGE_PIXELS:,}" in message


@pytest.mark.unit
def test_npy_files_arrays_and_pil_images_are_held_to_the_same_limits(tmp_path: Path) -> None:
    np.save(tmp_path / "strip.npy", STRIP)
    with pytest.raises(InputError, match=f"{tmp_path / 'strip.npy'}: too many pixels once"):
        load_image(tmp_path / "strip.npy")  # from the header: the array is not read
    with pytest.raises(InputError, match="<array uint8 \\(1, 50000\\)>: too many pixels once"):
        load_image(STRIP)
    with pytest.raises(InputError, match="<PIL L 50000x1>: too many pixels once resized"):
        model_view(Image.fromarray(STRIP))
    with pytest.raises(InputError, match="12000000 x 240"):
        preprocess_many([Image.fromarray(STRIP)])


@pytest.mark.unit
def test_the_resized_limit_is_inclusive() -> None:
    # A shorter side of 240 is not resized: the picture held is the image itself.
    widest = MAX_RESIZED_PIXELS // 240
    check_size("at.png", widest, 240, 240)
    with pytest.raises(InputError, match=f"more than the limit of {MAX_RESIZED_PIXELS:,}"):
        check_size("over.png", widest + 1, 240, 240)


@pytest.mark.unit
@pytest.mark.parametrize("pillow_warnings", ["ignore", "error"])
def test_pillows_warning_range_is_refused_like_any_source(
    tmp_path: Path, monkeypatch, pillow_warnings: str
) -> None:
    # Between Pillow's limit and twice it Pillow only warns: our guard refuses such a file
    # whatever the warnings filter (the warning made an error is refused too), and an array
    # of that size alike.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)
    path = tmp_path / "large.png"
    Image.fromarray(random_images(1, size=(100, 120))[0]).save(path)  # 12,000 pixels
    with warnings.catch_warnings():
        warnings.simplefilter(pillow_warnings, Image.DecompressionBombWarning)
        with pytest.raises(InputError, match="too many pixels") as from_file:
            load_image(path)
    assert str(path) in str(from_file.value) and "10,000" in str(from_file.value)
    with pytest.raises(InputError, match="120 x 100 = 12,000, more than Pillow's limit of 10,000"):
        load_image(random_images(1, size=(100, 120))[0])


# ------------------------------------------------------------- what stays accepted, and agrees
@pytest.mark.parity
def test_elongated_images_within_the_limits_score_alike(
    bundle: Path, tiny_model: InCTRL, tmp_path: Path
) -> None:
    shots = random_images(2, seed=31)
    strips = [random_images(1, seed=32 + i, size=size)[0] for i, size in enumerate(ELONGATED)]
    strips[1] = strips[1][:, :, 0]  # a grayscale line-scan strip
    Image.fromarray(strips[2]).save(tmp_path / "portrait.png")
    queries = [*strips[:2], tmp_path / "portrait.png"]
    detector = Detector.open(bundle)
    runtime = detector.score_arrays(CATEGORY, queries, detector.reference(shots))
    torch_side = tiny_model.score(
        queries, tiny_model.reference(shots), tiny_model.text_prior(CATEGORY)
    )
    assert np.isfinite(runtime.score).all()
    for name, values in zip(runtime._fields, runtime, strict=True):
        expected = getattr(torch_side, name).numpy()
        np.testing.assert_allclose(values, expected, rtol=0, atol=1e-4, err_msg=name)


# ------------------------------------------------------- one image where a list is expected
@pytest.mark.unit
def test_one_image_or_a_batch() -> None:
    gray, color = np.zeros((40, 30), np.uint8), np.zeros((40, 30, 3), np.uint8)
    for one in ("x.png", Path("x.png"), Image.new("L", (3, 4)), gray, color, color[:, :, :1]):
        assert len(image_sequence(one)) == 1
    batch = np.zeros((2, 40, 30), np.uint8)  # two grayscale images
    pixels = np.zeros((2, 3, 24, 24), np.float32)  # preprocessed
    for many in (["x.png", "y.png"], (gray,), batch, pixels):
        assert image_sequence(many) is many


@pytest.mark.unit
def test_a_single_path_is_one_image_in_the_runtime(bundle: Path, good: Path) -> None:
    detector = Detector.open(bundle)
    bank = detector.register(CATEGORY, str(good))
    assert bank.shots == 1 and bank.sources == (str(good),)
    one = detector.results(CATEGORY, str(good))
    listed = detector.results(CATEGORY, [str(good)])
    assert [r.image for r in one] == [str(good)]
    assert one[0].score == listed[0].score
    array = np.asarray(Image.open(good))
    assert detector.score_arrays(CATEGORY, array).score.tolist() == [listed[0].score]


@pytest.mark.unit
def test_a_single_path_is_one_image_in_the_torch_model(tiny_model: InCTRL, good: Path) -> None:
    bank = tiny_model.reference(str(good))
    assert bank.shots == 1 and bank.sources == (str(good),)
    prior = tiny_model.text_prior(CATEGORY)
    one = tiny_model.score(str(good), bank, prior)
    listed = tiny_model.score([str(good)], bank, prior)
    assert one.score.shape == (1,)
    assert one.score.tolist() == listed.score.tolist()
    assert tiny_model.pixels(good).shape == (1, 3, 240, 240)
