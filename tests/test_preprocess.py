"""Preprocessing: parity with torchvision, invariance to the input type, clear input errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import (
    Preprocessing,
    center_crop_box,
    load_image,
    preprocess,
    preprocess_many,
    resized_size,
)

from helpers import random_images

# (width, height): square, landscape, portrait, odd crop offsets that Python's round-half-to-even
# decides (241 x 500 -> 240 x 497, top 128.5 -> 128; 17 x 31 -> 240 x 437, top 98.5 -> 98),
# a shorter side already at 240, a very long side, and an upsampled tiny image.
SIZES = [
    (240, 240),
    (300, 260),
    (260, 300),
    (241, 500),
    (243, 400),
    (240, 300),
    (1000, 251),
    (17, 31),
]
MODES = ["RGB", "L", "RGBA", "LA", "P", "1", "I;16", "CMYK"]


def torchvision_reference(image: Image.Image, config: Preprocessing | None = None) -> np.ndarray:
    """The authors' pipeline, as torchvision runs it on a PIL image."""
    config = config or Preprocessing()
    pipeline = transforms.Compose(
        [
            transforms.Resize(config.size, interpolation=InterpolationMode.BICUBIC),
            transforms.CenterCrop(config.size),
            transforms.Lambda(lambda im: im.convert("RGB")),
            transforms.ToTensor(),
            transforms.Normalize(config.mean, config.std),
        ]
    )
    return pipeline(image).numpy()


def image_in_mode(mode: str, width: int, height: int, tmp_path: Path) -> Image.Image:
    """A seeded random image of the given Pillow mode, made the way such files usually arise."""
    seed = width * 1000 + height
    if mode == "I;16":
        # Full 16-bit range, written as a 16-bit PNG and read back as a user's file would be.
        path = tmp_path / "sixteen.png"
        sixteen = np.random.default_rng(seed).integers(0, 65536, (height, width), dtype=np.uint16)
        Image.fromarray(sixteen).save(path)
        image = load_image(path)
        assert image.mode in ("I;16", "I")
        return image
    if mode in ("RGBA", "LA"):
        (rgba,) = random_images(1, seed, (height, width), channels=4)
        return Image.fromarray(rgba).convert(mode)
    rgb = Image.fromarray(random_images(1, seed, (height, width))[0])
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return rgb.convert(mode)


# ------------------------------------------------------------------------ torchvision parity
@pytest.mark.parity
@pytest.mark.parametrize("size", SIZES, ids=[f"{w}x{h}" for w, h in SIZES])
@pytest.mark.parametrize("mode", MODES)
def test_matches_torchvision(mode: str, size: tuple[int, int], tmp_path: Path) -> None:
    image = image_in_mode(mode, *size, tmp_path)
    assert image.size == size
    ours = preprocess(load_image(image))
    reference = torchvision_reference(image)
    assert ours.dtype == np.float32
    assert ours.shape == (3, 240, 240)
    assert ours.flags.c_contiguous
    assert np.abs(ours - reference).max() <= 1e-6


@pytest.mark.parity
def test_matches_torchvision_with_other_settings() -> None:
    config = Preprocessing(size=224, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    image = Image.fromarray(random_images(1, seed=3, size=(257, 301))[0])
    ours = preprocess(image, config)
    assert ours.shape == (3, 224, 224)
    assert np.abs(ours - torchvision_reference(image, config)).max() <= 1e-6


# ------------------------------------------------------------------------ resize/crop arithmetic
@pytest.mark.unit
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (240, 240, (240, 240)),
        (300, 260, (276, 240)),  # 240 * 300 / 260 = 276.9 -> 276 (truncated, not rounded)
        (260, 300, (240, 276)),
        (241, 500, (240, 497)),  # 497.9 -> 497
        (243, 400, (240, 395)),
        (1000, 251, (956, 240)),
        (17, 31, (240, 437)),  # upsampling: 437.6 -> 437
        (480, 240, (480, 240)),
        (100, 50, (480, 240)),
    ],
)
def test_resized_size(width: int, height: int, expected: tuple[int, int]) -> None:
    assert resized_size(width, height, 240) == expected


@pytest.mark.unit
@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (240, 240, (0, 0, 240, 240)),
        (276, 240, (18, 0, 258, 240)),
        (240, 497, (0, 128, 240, 368)),  # 128.5 rounds half to even: 128, not 129
        (240, 395, (0, 78, 240, 318)),  # 77.5 -> 78
        (240, 437, (0, 98, 240, 338)),  # 98.5 -> 98
        (241, 241, (0, 0, 240, 240)),  # 0.5 -> 0
        (243, 243, (2, 2, 242, 242)),  # 1.5 -> 2
        (956, 240, (358, 0, 598, 240)),
    ],
)
def test_center_crop_box(width: int, height: int, expected: tuple[int, int, int, int]) -> None:
    assert center_crop_box(width, height, 240) == expected


# ------------------------------------------------------------------------ input type invariance
@pytest.mark.parity
def test_color_sources_agree(tmp_path: Path) -> None:
    array = random_images(1, seed=1, size=(260, 300))[0]
    png, npy = tmp_path / "color.png", tmp_path / "color.npy"
    Image.fromarray(array).save(png)
    np.save(npy, array)
    expected = preprocess(load_image(Image.fromarray(array)))
    for source in (png, str(png), array, npy, str(npy)):
        assert np.array_equal(preprocess(load_image(source)), expected), source


@pytest.mark.parity
def test_rgba_sources_agree(tmp_path: Path) -> None:
    (array,) = random_images(1, seed=2, size=(250, 270), channels=4)
    png = tmp_path / "rgba.png"
    Image.fromarray(array).save(png)
    expected = preprocess(load_image(Image.fromarray(array)))
    assert np.array_equal(preprocess(load_image(png)), expected)
    assert np.array_equal(preprocess(load_image(array)), expected)


@pytest.mark.parity
def test_grayscale_sources_agree(tmp_path: Path) -> None:
    array = random_images(1, seed=4, size=(300, 260))[0][:, :, 0]
    png, npy = tmp_path / "gray.png", tmp_path / "gray.npy"
    Image.fromarray(array).save(png)
    np.save(npy, array)
    expected = preprocess(load_image(Image.fromarray(array)))
    for source in (png, array, array[:, :, None], npy):
        assert np.array_equal(preprocess(load_image(source)), expected)
    # Gray input becomes three equal channels before normalization.
    config = Preprocessing()
    pixels = expected * np.asarray(config.std, np.float32)[:, None, None]
    pixels += np.asarray(config.mean, np.float32)[:, None, None]
    assert np.allclose(pixels[0], pixels[1], atol=1e-6)
    assert np.allclose(pixels[1], pixels[2], atol=1e-6)


@pytest.mark.parity
def test_sixteen_bit_sources_agree(tmp_path: Path) -> None:
    array = np.random.default_rng(5).integers(0, 65536, (260, 300), dtype=np.uint16)
    png, npy = tmp_path / "sixteen.png", tmp_path / "sixteen.npy"
    Image.fromarray(array).save(png)
    np.save(npy, array)
    expected = preprocess(load_image(png))
    assert np.array_equal(preprocess(load_image(array)), expected)
    assert np.array_equal(preprocess(load_image(npy)), expected)
    assert np.array_equal(preprocess(load_image(Image.open(png))), expected)


@pytest.mark.parity
def test_non_contiguous_array_matches_its_copy() -> None:
    array = random_images(1, seed=6, size=(260, 300))[0][:, ::-1]
    expected = preprocess(load_image(np.ascontiguousarray(array)))
    assert np.array_equal(preprocess(load_image(array)), expected)


@pytest.mark.unit
def test_preprocess_many_stacks(tmp_path: Path) -> None:
    png = tmp_path / "a.png"
    Image.fromarray(random_images(1, seed=7, size=(260, 300))[0]).save(png)
    sources = [png, random_images(1, seed=8, size=(31, 17))[0], Image.new("L", (400, 240), 128)]
    batch = preprocess_many(sources)
    assert batch.shape == (3, 3, 240, 240)
    assert batch.dtype == np.float32
    for row, source in zip(batch, sources, strict=True):
        assert np.array_equal(row, preprocess(load_image(source)))
    assert preprocess_many((png,)).shape == (1, 3, 240, 240)


# ------------------------------------------------------------------------ bad input
@pytest.mark.unit
def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.png"
    with pytest.raises(InputError, match="missing.png") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.unit
def test_directory_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_image(tmp_path)
    assert str(tmp_path) in str(info.value)


CORRUPT_FILES = {
    "random": np.random.default_rng(9).bytes(2000),
    "empty": b"",
    "png-signature-then-garbage": b"\x89PNG\r\n\x1a\n" + np.random.default_rng(10).bytes(200),
}
UNSUPPORTED_ARRAYS = {
    "float64-gray": np.zeros((32, 32), dtype=np.float64),
    "float64-color": np.zeros((32, 32, 3), dtype=np.float64),
    "two-channels": np.zeros((32, 32, 2), dtype=np.uint8),
    "uint16-color": np.zeros((32, 32, 3), dtype=np.uint16),
    "one-dim": np.zeros((32,), dtype=np.uint8),
}


@pytest.mark.unit
@pytest.mark.parametrize("content", CORRUPT_FILES.values(), ids=CORRUPT_FILES)
def test_corrupt_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "corrupt.png"
    path.write_bytes(content)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.unit
def test_truncated_file(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    Image.fromarray(random_images(1, seed=11, size=(100, 120))[0]).save(good)
    path = tmp_path / "truncated.png"
    path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.unit
@pytest.mark.parametrize("array", UNSUPPORTED_ARRAYS.values(), ids=UNSUPPORTED_ARRAYS)
def test_unsupported_array(array: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unsupported array") as info:
        load_image(array)
    assert str(array.dtype) in str(info.value)
    assert str(array.shape) in str(info.value)
    path = tmp_path / "bad.npy"
    np.save(path, array)
    with pytest.raises(InputError, match="unsupported array") as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.unit
def test_pickled_npy_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError) as info:
        load_image(path)
    assert str(path) in str(info.value)


@pytest.mark.unit
def test_empty_npy_array(tmp_path: Path) -> None:
    # A zero-size array is a user mistake like any other bad array, not a crash in the resize.
    path = tmp_path / "empty.npy"
    np.save(path, np.zeros((0, 32, 3), dtype=np.uint8))
    with pytest.raises(InputError) as info:
        preprocess(load_image(path))
    assert str(path) in str(info.value)


@pytest.mark.unit
def test_not_an_image_source() -> None:
    with pytest.raises(InputError, match="int"):
        load_image(42)  # type: ignore[arg-type]


@pytest.mark.unit
def test_preprocess_many_names_the_bad_file(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    Image.fromarray(random_images(1, seed=12, size=(64, 64))[0]).save(good)
    bad.write_bytes(b"not an image")
    with pytest.raises(InputError) as info:
        preprocess_many([good, bad])
    assert str(bad) in str(info.value)
    assert str(good) not in str(info.value)


@pytest.mark.unit
def test_preprocess_many_empty() -> None:
    with pytest.raises(InputError, match="no images"):
        preprocess_many([])
