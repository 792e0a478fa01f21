"""Import name inctrl, folder inctrl/: InCTRL few-shot anomaly detection on open_clip, exact,
batched and fast.

    model = inctrl.InCTRL.from_checkpoint("inctrl_k2.pyth")
    bank = model.reference(["good_1.png", "good_2.png"])
    prior = model.text_prior("candle")
    scores = model.score(["query.png"], bank, prior)

Names load on first use, so that torch-free parts (preprocessing, synthetic data, the command
line's argument checks) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PRESETS": "inctrl.config",
    "HeadConfig": "inctrl.config",
    "InCTRLConfig": "inctrl.config",
    "TextConfig": "inctrl.config",
    "VisionConfig": "inctrl.config",
    "get_config": "inctrl.config",
    "InputError": "inctrl_runtime.errors",
    "ImageFeatures": "inctrl.backbone",
    "InCTRL": "inctrl.model",
    "Scores": "inctrl.residual",
    "ReferenceBank": "inctrl.state",
    "TextPrior": "inctrl.state",
}

__all__ = [
    "PRESETS",
    "HeadConfig",
    "ImageFeatures",
    "InCTRL",
    "InCTRLConfig",
    "InputError",
    "ReferenceBank",
    "Scores",
    "TextConfig",
    "TextPrior",
    "VisionConfig",
    "get_config",
]

if TYPE_CHECKING:
    from inctrl.backbone import ImageFeatures
    from inctrl.config import (
        PRESETS,
        HeadConfig,
        InCTRLConfig,
        TextConfig,
        VisionConfig,
        get_config,
    )
    from inctrl.model import InCTRL
    from inctrl.residual import Scores
    from inctrl.state import ReferenceBank, TextPrior
    from inctrl_runtime.errors import InputError


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inctrl' has no attribute {name!r}")
