"""p-values and decisions do not depend on the batch: a backend's score of an image moves a
little with the batch it is in (within the parity contract's 1e-5), and a calibration score
within ``TIE_TOLERANCE`` below a query's counts as at least as large, so a re-scored
calibration image gets the same p-value and decision at every batch size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.decisions import TIE_TOLERANCE
from inctrl_runtime.detector import Detector

from helpers import random_images

pytestmark = pytest.mark.parity
CATEGORY = "synth_fabric"  # one of the demo's categories


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory) -> Path:
    """The embedded demo model's bundle: its scores move with the batch (the tiny model's,
    too small for onnxruntime to split its work differently, do not)."""
    from inctrl_export.bundle import export_bundle

    out = tmp_path_factory.mktemp("ties") / "demo"
    export_bundle(out, None, [CATEGORY], verify=False)
    return out


def test_rescored_calibration_images_keep_their_p_values(demo_bundle: Path) -> None:
    detector = Detector.open(demo_bundle)
    detector.register(CATEGORY, random_images(2, seed=70))
    normals = random_images(40, seed=71, size=[(240, 240), (260, 300), (300, 250)])
    detector.calibrate(CATEGORY, normals, batch_size=16)
    one = detector.results(CATEGORY, normals, batch_size=1, fpr=0.1)
    many = detector.results(CATEGORY, normals, batch_size=16, fpr=0.1)
    wobble = max(abs(a.score - b.score) for a, b in zip(one, many, strict=True))
    assert 0 < wobble <= TIE_TOLERANCE  # scores move with the batch, within the tolerance
    assert [r.p_value for r in one] == [r.p_value for r in many]
    assert [r.anomalous for r in one] == [r.anomalous for r in many]
    n = len(normals)
    assert all(r.p_value >= 1 / (n + 1) for r in one)  # each counts itself at least
    assert np.mean([r.anomalous for r in one]) <= 0.1 + 1 / (n + 1)
