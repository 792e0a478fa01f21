"""inctrl: InCTRL few-shot anomaly detection on open_clip, exact, batched and fast.

model = inctrl.InCTRL.from_checkpoint("inctrl_k2.pyth")
bank = model.reference(["good_1.png", "good_2.png"])
prior = model.text_prior("candle")
scores = model.score(["query.png"], bank, prior)
"""

from inctrl.backbone import ImageFeatures
from inctrl.config import PRESETS, HeadConfig, InCTRLConfig, TextConfig, VisionConfig, get_config
from inctrl.errors import InputError
from inctrl.model import InCTRL
from inctrl.residual import Scores
from inctrl.state import ReferenceBank, TextPrior

__version__ = "0.1.0"

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
