"""Decisions need their own precision: a calibration made at another precision than the
bundle's encoder gives no p-values, decisions, regions or monitor (one line says to calibrate
again), in process, on the command line and in the served entry model; another backend at the
same precision decides, with a note. On these machines only TensorRT plans could run another
precision than an onnxruntime calibration's, so the tests write a calibration record of another
precision into the bank."""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.decisions import CalibrationWarning
from inctrl_runtime.detector import Detector
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.triton.entry import EntryStage

from helpers import CATEGORY, bank_file, calibrated, inctrl_run, png_bytes

pytestmark = pytest.mark.cli


def recalibrated(bundle: Path, **change: str) -> None:
    """The category's calibration record, made as if by another backend or precision."""
    path = bank_file(bundle)
    bank = NumpyBank.load(path)
    bank.calibrated(dataclasses.replace(bank.calibration, **change)).save(path)


def test_a_calibration_of_another_precision_decides_nothing(bundle: Path, inputs: dict) -> None:
    calibrated(bundle, inputs)
    queries = inputs["queries"][:3]
    recalibrated(bundle, precision="int8")
    detector = Detector.open(bundle)
    with pytest.warns(CalibrationWarning) as said:
        results = detector.results(CATEGORY, queries, fpr=0.1)
    (line,) = [str(w.message) for w in said]
    assert line == ("the calibration was made at int8, this encoder runs fp32: no p-values or "
                    "decisions; run inctrl-run calibrate again to decide at fp32")  # fmt: skip
    for result in results:
        assert (result.p_value, result.threshold, result.anomalous) == (None, None, None)
        assert result.regions is None and result.region_threshold is None
    # the command line: null decisions, the line once on stderr, exit 0
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.1, "--json", *queries)
    assert outcome.code == 0, outcome.err
    assert all(r["p_value"] is None and r["anomalous"] is None for r in json.loads(outcome.out))
    assert outcome.err.count("made at int8, this encoder runs fp32") == 1, outcome.err
    inctrl_run("score", bundle, "--category", CATEGORY, "--monitor", *queries).assert_refused(
        "--monitor: the calibration was made at int8", "inctrl-run calibrate again"
    )
    assert "onnxruntime-cpu int8" in inctrl_run("info", bundle).out  # what made it, shown
    # the served entry model decides nothing either
    entry = EntryStage(detector.bundle, detector.head_engine, detector.encode, 0.1)
    image = png_bytes(np.zeros((64, 64, 3), np.uint8))
    asked = {"image": np.array([[image]], dtype=object),
             "category": np.array([[CATEGORY.encode()]], dtype=object)}  # fmt: skip
    with pytest.warns(CalibrationWarning) as said:  # in the server's log
        (answer,) = entry.run([asked])
    assert [str(w.message) for w in said] == [f"category {CATEGORY!r}: {line}"]
    assert np.isnan(answer["p_value"]).all() and not answer["anomalous"].any()
    # calibrated again at this precision: decisions again
    detector.calibrate(CATEGORY, inputs["normals"])
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationWarning)
        assert all(r.p_value is not None for r in detector.results(CATEGORY, queries, fpr=0.1))


def test_another_backend_at_the_same_precision_decides_with_a_note(
    bundle: Path, inputs: dict
) -> None:
    calibrated(bundle, inputs)
    recalibrated(bundle, backend="tensorrt")
    with pytest.warns(CalibrationWarning, match="scored with tensorrt fp32, this is "
                      "onnxruntime-cpu fp32: scores may differ slightly"):  # fmt: skip
        results = Detector.open(bundle).results(CATEGORY, inputs["queries"][:2], fpr=0.1)
    assert all(r.p_value is not None and r.anomalous is not None for r in results)
