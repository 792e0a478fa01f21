"""How a registered bank's file grows (docs/architecture.md, "Reference banks"): arrays of later
additions load, are digested and kept; a new calibration drops the ``calibration_*`` ones it
does not know; a bank that requires a feature this runtime does not know is refused in one
line; and a bank without additions keeps the digest it was saved with."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.decisions import Calibration
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.references import REQUIRES, NumpyBank

from helpers import random_images

pytestmark = pytest.mark.unit

CATEGORY = "candle"


@pytest.fixture
def registered(bundle: Path) -> tuple[Detector, Path]:
    """The bundle's detector with candle registered on two seeded shots, and its bank file."""
    detector = Detector.open(bundle)
    detector.register(CATEGORY, random_images(2, seed=40))
    return detector, bundle / "references" / f"{CATEGORY}.npz"


def test_arrays_of_later_additions_load_and_are_kept(registered) -> None:
    detector, path = registered
    plain = NumpyBank.load(path)
    assert plain.extras == {}
    extras = {"thumbnails": np.arange(12, dtype=np.uint8).reshape(2, 2, 3)}
    grown = dataclasses.replace(plain, extras=extras)
    assert grown.digest != plain.digest  # an addition is part of what the digest covers
    grown.save(path)
    loaded = NumpyBank.load(path)
    assert loaded.digest == grown.digest
    np.testing.assert_array_equal(loaded.extras["thumbnails"], extras["thumbnails"])
    scores = detector.score_arrays(CATEGORY, random_images(2, seed=41))  # it still scores
    assert np.isfinite(scores.score).all()
    with np.load(path) as data:  # a changed addition is damage, caught by the digest
        arrays = {name: data[name] for name in data.files}
    arrays["thumbnails"] = arrays["thumbnails"] + 1
    np.savez(path, **arrays)
    with pytest.raises(InputError, match="do not match its digest"):
        NumpyBank.load(path)


def test_a_new_calibration_drops_the_calibration_additions_it_does_not_know(registered) -> None:
    detector, path = registered
    later = {
        "calibration_max_patch_residual": np.array([0.1, 0.2], np.float32),
        "thumbnails": np.zeros((2, 2), np.uint8),
    }
    dataclasses.replace(NumpyBank.load(path), extras=later).save(path)
    detector.calibrate(CATEGORY, random_images(4, seed=42))
    calibrated = NumpyBank.load(path)
    assert calibrated.calibration is not None and calibrated.calibration.n == 4
    assert set(calibrated.extras) == {"thumbnails"}  # the bank's own addition stays


def test_a_bank_requiring_an_unknown_feature_is_refused(registered) -> None:
    detector, path = registered
    requires = np.array(["stereo_pairs"], dtype=np.str_)
    dataclasses.replace(NumpyBank.load(path), extras={REQUIRES: requires}).save(path)
    with pytest.raises(InputError) as refused:
        NumpyBank.load(path)
    message = str(refused.value)
    assert "newer inctrl_runtime" in message and "stereo_pairs" in message
    assert "\n" not in message
    with pytest.raises(InputError, match="newer inctrl_runtime"):
        Detector.open(path.parent.parent).results(CATEGORY, random_images(1, seed=43))


def test_a_bank_without_additions_keeps_its_digest(registered) -> None:
    _, path = registered
    bank = NumpyBank.load(path)
    calibration = Calibration.of(np.array([0.3, 0.1]), ["a", "b"], "cpu", "fp32", "0" * 64)
    for same in (bank, dataclasses.replace(bank, extras={})):
        assert same.digest == bank.digest
    with np.load(path) as data:
        assert str(data["digest"]) == bank.digest  # the digest the file was saved with
    assert (
        bank.calibrated(calibration).digest
        == dataclasses.replace(bank, calibration=calibration).digest
    )  # no additions to drop: the same bank as before additions existed


def test_calibration_map_maxima_are_an_addition_earlier_readers_verify(registered) -> None:
    """The region threshold's maxima are the first field added this way: a reader that knows
    them loads them into the calibration; one that does not would keep them as an extra with the
    same digest; a calibration without them keeps the digest it always had."""
    detector, path = registered
    calibration = detector.calibrate(CATEGORY, random_images(4, seed=42))
    maxima = calibration.map_maxima
    assert maxima is not None and len(maxima) == 4 and (np.diff(maxima) >= 0).all()
    bank = NumpyBank.load(path)
    np.testing.assert_array_equal(bank.calibration.map_maxima, maxima)
    assert bank.extras == {}
    without = dataclasses.replace(bank.calibration, map_maxima=None)
    as_extra = dataclasses.replace(
        bank, calibration=without, extras={"calibration_map_maxima": maxima}
    )
    assert as_extra.digest == bank.digest  # what an earlier reader computes
    before = dataclasses.replace(bank, calibration=without)
    assert before.digest != bank.digest  # the maxima are covered
    before.save(path)
    assert NumpyBank.load(path).calibration.map_maxima is None  # a bank from before loads
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    arrays["calibration_map_maxima"] = maxima[:3]  # one short: refused, not misread
    arrays["digest"] = np.str_(
        dataclasses.replace(
            bank, calibration=dataclasses.replace(bank.calibration, map_maxima=maxima[:3])
        ).digest
    )
    np.savez(path, **arrays)
    with pytest.raises(InputError, match="map maxima"):
        NumpyBank.load(path)


def test_tiled_banks_before_and_with_the_whole_view(bundle: Path, tmp_path: Path) -> None:
    """A tiled bank kept before the whole view existed (its tiling without ``whole``) still
    loads and is scored tiles only, one view group; a bank with the whole view requires it
    and its views' adapted means, and is refused in one line without them."""
    from inctrl_runtime.tiling import Tiling

    detector = Detector.open(bundle)
    frames = random_images(2, seed=70, size=(300, 520))
    whole = detector.reference(frames, tiling=Tiling(1, 2, whole=True))
    assert whole.groups == ((0, 1), (2,)) and whole.view_adapted.shape == (3, 32)
    path = tmp_path / "whole.npz"
    dataclasses.replace(whole, category="candle").save(path)
    with np.load(path) as data:
        assert set(map(str, data[REQUIRES])) == {"tiles", "whole_view"}
        arrays = {name: data[name] for name in data.files}
    del arrays["view_adapted_means"]
    np.savez(path, **arrays)
    with pytest.raises(InputError, match="not a valid reference bank .*lack their adapted means"):
        NumpyBank.load(path)
    # before the whole view: two tiles a frame, one group, the patches of the k x 2 tiles
    older = detector.reference(frames, tiling=Tiling(1, 2, whole=False))
    assert older.groups == ((0, 1),) and older.view_adapted is None
    dataclasses.replace(older, category="candle").save(path)
    loaded = NumpyBank.load(path)
    assert loaded.tiling == Tiling(1, 2, whole=False) and loaded.patches.shape[1] == 2 * 2 * 225
    scores = detector.score_arrays("candle", random_images(2, seed=71, size=(300, 520)),
                                   bank=loaded)  # fmt: skip
    assert scores.patch_residual_map.shape == (2, 2 * 225)
