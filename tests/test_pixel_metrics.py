"""Pixel metrics on frame maps: AUPRO and pixel AUROC against a hand computation and against an
independent implementation, region recall and good-part region-flag rate, NaN (not inspected)
pixels left out, masks read at their image's resolution.

anomalib's AUPRO does not install here (it pins other torch and lightning versions); the
independent implementation below follows MVTec AD's definition with scipy and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from sklearn.metrics import auc, roc_auc_score

from inctrl_runtime import pixel_metrics
from inctrl_runtime.decisions import threshold
from inctrl_runtime.errors import InputError
from inctrl_runtime.pixel_metrics import (
    PixelLabels,
    PixelTruth,
    PixelValues,
    pair_auroc,
    region_point,
)
from inctrl_runtime.regions import Framing, frame_map

pytestmark = pytest.mark.unit
NAN = np.nan


def hand_case() -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """A good part and an anomalous image with two regions and a masked pixel not inspected."""
    good = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.9]], dtype=np.float32)
    anomalous = np.array([[0.8, 0.5, 0.6, 0.0, 0.5, 0.95, 0.1, NAN]], dtype=np.float32)
    mask = np.array([[1, 1, 0, 0, 0, 1, 0, 1]], dtype=bool)
    return [good, anomalous], [None, mask]


def test_aupro_and_pixel_auroc_of_a_hand_made_case() -> None:
    """Regions: R1 = {0.8, 0.5} (pixels 0-1), R2 = {0.95}; the masked NaN pixel is not
    inspected, so no third region. Defect-free: 0.9 0.6 0.5 0.5 0.4 0.3 0.2 0.1 0.1 0.0 (ten, so
    each adds 0.1 to the FPR). PRO = (share of R1 + share of R2) / 2. Down the thresholds:

        >= 0.95: R2            FPR 0    PRO 0.5
        >= 0.9:  a normal      FPR 0.1  PRO 0.5
        >= 0.8:  half of R1    FPR 0.1  PRO 0.75
        >= 0.6:  a normal      FPR 0.2  PRO 0.75
        >= 0.5:  two normals and the rest of R1 together: FPR 0.4, PRO 1

    Area to 0.3: 0.1 x 0.5 + 0.1 x 0.75 + the cut trapezoid from 0.2 to 0.3, where PRO is
    0.75 + 0.25 / 2 = 0.875: 0.1 x (0.75 + 0.875) / 2 = 0.08125; total 0.20625, / 0.3 = 0.6875.
    To 1: 0.20625 + 0.1 x (0.875 + 1) / 2 + 0.6 x 1 = 0.9.
    Pixel AUROC: 0.95 beats 10 normals, 0.8 beats 9, 0.5 beats 6 and ties 2: 26 / 30.
    """
    values = PixelValues.of(*hand_case())
    assert values.regions == 2 and values.normal.size == 10 and values.defect.size == 3
    assert values.aupro() == pytest.approx(0.6875)
    assert values.aupro(1.0) == pytest.approx(0.9)
    assert values.auroc() == pytest.approx(26 / 30)
    assert values.region_peaks.tolist() == pytest.approx([0.8, 0.95])  # row-major order
    assert values.good_peaks.tolist() == pytest.approx([0.9])


def test_metrics_need_both_kinds_of_pixels() -> None:
    good = np.ones((3, 3), dtype=np.float32)
    only_good = PixelValues.of([good], [None])
    assert only_good.aupro() is None and only_good.auroc() is None
    assert only_good.region_recall(0.5) is None and only_good.region_flag_rate(0.5) == 1.0
    everywhere = PixelValues.of([good], [np.ones((3, 3), dtype=bool)])  # no defect-free pixel
    assert everywhere.aupro() is None and everywhere.auroc() is None
    assert everywhere.region_flag_rate(0.5) is None and everywhere.region_recall(0.5) == 1.0
    with pytest.raises(ValueError, match="FPR limit"):
        everywhere.aupro(0)
    with pytest.raises(ValueError, match="mask of shape"):
        PixelValues.of([good], [np.ones((3, 4), dtype=bool)])


# ------------------------------------------------------------- an independent implementation
def sweep(maps, masks, limit: float) -> tuple[float, float]:
    """AUPRO and pixel AUROC the plain way: every distinct value a threshold, scipy's labels for
    the regions (8-connected), scikit-learn's ``auc`` on the curve cut at ``limit``."""
    normal, regions, labels_all, values_all = [], [], [], []
    for values, mask in zip(maps, masks, strict=True):
        inspected = ~np.isnan(values)
        truth = np.zeros(values.shape, bool) if mask is None else mask & inspected
        labels, count = ndimage.label(truth, structure=np.ones((3, 3)))
        normal.append(values[inspected & ~truth])
        regions += [values[labels == i] for i in range(1, count + 1)]
        labels_all.append(truth[inspected])
        values_all.append(values[inspected])
    normal = np.concatenate(normal)
    thresholds = np.unique(np.concatenate([normal, *regions]))[::-1]
    fpr = np.array([0.0] + [np.mean(normal >= t) for t in thresholds])
    pro = np.array([0.0] + [np.mean([np.mean(r >= t) for r in regions]) for t in thresholds])
    inside = int(np.sum(fpr <= limit))  # fpr never falls, so these come first
    x, y = list(fpr[:inside]), list(pro[:inside])
    if x[-1] < limit:
        share = (limit - fpr[inside - 1]) / (fpr[inside] - fpr[inside - 1])
        x.append(limit)
        y.append(pro[inside - 1] + share * (pro[inside] - pro[inside - 1]))
    pixel = roc_auc_score(np.concatenate(labels_all), np.concatenate(values_all))
    return auc(x, y) / limit, pixel


def random_case(seed: int, levels: int | None):
    """Five small maps (some with a NaN band, as a crop leaves), blobby masks on three of them;
    values rounded to ``levels`` steps make ties, within and across the classes."""
    rng = np.random.default_rng(seed)
    maps, masks = [], []
    for index in range(5):
        height, width = rng.integers(6, 14, size=2)
        values = rng.random((height, width))
        mask = None
        if index % 2 == 0:
            mask = ndimage.binary_dilation(rng.random((height, width)) > 0.85)
            values[mask] += 0.3  # defects score higher, with overlap
        if levels:
            values = np.round(values * levels) / levels
        values = values.astype(np.float32)
        if index == 1:
            values[:, :2] = NAN
        if index == 2:
            values[-1, :] = NAN
        maps.append(values)
        masks.append(mask)
    return maps, masks


@pytest.mark.parametrize("levels", [None, 5, 20])
@pytest.mark.parametrize("limit", [0.3, 0.05, 1.0])
def test_aupro_and_pixel_auroc_equal_a_threshold_sweep(levels, limit) -> None:
    for seed in range(4):
        maps, masks = random_case(seed, levels)
        want_aupro, want_auroc = sweep(maps, masks, limit)
        values = PixelValues.of(maps, masks)
        assert values.aupro(limit) == pytest.approx(want_aupro, abs=1e-12)
        assert values.auroc() == pytest.approx(want_auroc, abs=1e-12)


def test_searches_in_chunks_give_the_same_numbers(monkeypatch) -> None:
    values = PixelValues.of(*random_case(1, 20))
    whole = (values.aupro(), values.auroc())
    monkeypatch.setattr(pixel_metrics, "SEARCH_CHUNK", 7)  # many chunks, a short last one
    assert (values.aupro(), values.auroc()) == pytest.approx(whole, abs=1e-12)


def test_pair_auroc_is_scikit_learns() -> None:
    rng = np.random.default_rng(3)
    normal = np.sort(rng.integers(0, 6, 40).astype(np.float64))
    anomalous = rng.integers(2, 9, 25).astype(np.float64)
    labels = np.r_[np.zeros(40), np.ones(25)]
    want = roc_auc_score(labels, np.r_[normal, anomalous])
    assert pair_auroc(normal, anomalous) == pytest.approx(want, abs=1e-15)


# ---------------------------------------------------------------------- regions at a cut
def test_region_recall_and_flag_rate_on_hand_made_maps() -> None:
    """Three good parts peaking at 0.2, 0.6 and 0.9 (the 0.95 of the third is not inspected);
    an anomalous image with regions peaking at 0.7 and 0.4 (8-connected: the diagonal pixel
    joins the first) and a defect-free pixel at 0.99, which no region owns."""
    goods = [
        np.full((2, 2), 0.2, np.float32),
        np.array([[0.1, 0.6]], np.float32),
        np.array([[0.9, NAN], [0.3, NAN]], np.float32),
    ]
    goods[2][0, 1] = NAN
    anomalous = np.array(
        [[0.7, 0.0, 0.0, 0.99], [0.0, 0.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.4]], dtype=np.float32
    )
    mask = np.zeros((3, 4), dtype=bool)
    mask[0, 0] = mask[1, 1] = mask[2, 3] = True
    values = PixelValues.of([*goods, anomalous], [None, None, None, mask])
    assert values.regions == 2 and values.region_peaks.tolist() == pytest.approx([0.7, 0.4])
    for cut, recall, flagged in [(0.1, 1, 1), (0.45, 1 / 2, 2 / 3), (0.65, 1 / 2, 1 / 3)]:
        assert values.region_recall(cut) == recall
        assert values.region_flag_rate(cut) == flagged
    assert (values.region_recall(0.7), values.region_flag_rate(0.9)) == (0.0, 0.0)  # not above


def test_region_point_takes_the_conformal_threshold_of_the_map_maxima() -> None:
    maxima = np.linspace(0.1, 0.5, 9, dtype=np.float32)  # n = 9: enough for 0.1, not 0.05
    values = PixelValues.of(*hand_case())
    at_10 = region_point(maxima, values, 0.1)
    cut = threshold(maxima, 0.1)
    assert at_10 == (0.1, cut, values.region_recall(cut), values.region_flag_rate(cut))
    assert at_10.region_recall == 1.0 and at_10.region_flag_rate == 1.0  # cut just above 0.5
    assert region_point(maxima, values, 0.05) == (0.05, None, None, None)
    assert region_point(maxima, None, 0.1) == (0.1, cut, None, None)


# ------------------------------------------------------------- frames and masks from files
def test_maps_and_masks_meet_at_the_image_resolution(tmp_path) -> None:
    """An 80 x 60 image: the model (S = 30) sees the centre 60 x 60, a 10-pixel band each side
    is not inspected; a defect drawn only in the band is no region."""
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((60, 80, 3), np.uint8)).save(tmp_path / "good.png")
    mask = np.zeros((60, 80), np.uint8)
    mask[20:30, 40:50] = 255
    mask[0:10, 0:5] = 255  # in the left band
    Image.fromarray(mask).save(tmp_path / "a_mask.png")
    images = [str(tmp_path / name) for name in ("a.png", "good.png", "unread.png")]
    labels = PixelLabels.of(images, [1, 0, 1], [str(tmp_path / "a_mask.png"), None, None], 30)
    assert labels.rows == [0, 1]  # an anomalous image without a mask is left out
    truths = labels.truths
    assert truths[0].framing == Framing(80, 60, 30) and truths[1].mask_pixels() is None
    assert np.array_equal(truths[0].mask_pixels(), mask > 127)
    patch_maps = np.random.default_rng(0).random((3, 9)).astype(np.float32)
    got = labels.values(patch_maps)
    frames = [frame_map(m, t.framing) for m, t in zip(patch_maps[:2], truths, strict=True)]
    assert np.isnan(frames[0][:, :10]).all() and not np.isnan(frames[0][:, 10:70]).any()
    want = PixelValues.of(frames, [mask > 127, None])
    assert got.regions == 1 and got.defect.size == 100
    assert got.normal.size == 2 * 60 * 60 - 100
    for name in ("normal", "defect", "defect_weight", "region_peaks", "good_peaks"):
        assert np.array_equal(getattr(got, name), getattr(want, name)), name
    assert PixelLabels.of(images[1:], [0, 1], [None, None], 30) is None  # no mask at all

    Image.fromarray(np.zeros((60, 70, 3), np.uint8)).save(tmp_path / "b.png")
    other = PixelTruth.of(tmp_path / "b.png", tmp_path / "a_mask.png", 30)
    with pytest.raises(InputError, match="mask is 80x60, but its image .* is 70x60; masks must"):
        other.mask_pixels()
