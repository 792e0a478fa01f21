"""Import name inctrl_runtime, folder runtime/: InCTRL bundles scored with numpy and onnxruntime.

    det = inctrl_runtime.Detector.open("bundle/", device="cpu")
    det.register("candle", ["good_1.png", "good_2.png"])
    results = det.results("candle", ["a.png", "b.png"])   # .score, .regions, .heatmap(), .mask()

It never imports torch or ``inctrl``. Names load on first use, so that the torch side can use the
preprocessing and file helpers here without importing onnxruntime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "Bundle": "inctrl_runtime.bundle",
    "BundleError": "inctrl_runtime.errors",
    "Calibration": "inctrl_runtime.decisions",
    "Detector": "inctrl_runtime.detector",
    "InputError": "inctrl_runtime.errors",
    "Preprocessing": "inctrl_runtime.preprocess",
    "NumpyBank": "inctrl_runtime.references",
    "Region": "inctrl_runtime.regions",
    "Result": "inctrl_runtime.results",
    "Scores": "inctrl_runtime.results",
}

__all__ = [
    "Bundle",
    "BundleError",
    "Calibration",
    "Detector",
    "InputError",
    "Preprocessing",
    "NumpyBank",
    "Region",
    "Result",
    "Scores",
]

if TYPE_CHECKING:
    from inctrl_runtime.bundle import Bundle
    from inctrl_runtime.decisions import Calibration
    from inctrl_runtime.detector import Detector
    from inctrl_runtime.errors import BundleError, InputError
    from inctrl_runtime.preprocess import Preprocessing
    from inctrl_runtime.references import NumpyBank
    from inctrl_runtime.regions import Region
    from inctrl_runtime.results import Result, Scores


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inctrl_runtime' has no attribute {name!r}")
