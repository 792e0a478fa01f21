"""Training the adapter and the two heads as the authors do (docs/model.md, "Training as
the authors run it"), in one process or under ``torchrun`` (DistributedDataParallel, same entry
point).

A sample is a query (normal or anomalous) with k normal prompts of its category, drawn at random
without replacement from the category's normal pool: all its normal images, train and test split,
like the authors' ``<name>_normal.json``. Prompts are redrawn for every sample and, as in the
authors' code, the pool may hold the query itself (a normal query then sometimes meets itself
among its prompts). Batches are balanced: half normal, half anomalous queries (``sampling``).

The backbone is frozen (eval mode) and preprocessing is deterministic, so each distinct image is
encoded once and its features kept for the run when they fit in memory; text priors are computed
once per category. Only the adapter and the heads train (AdamW), the heads in train mode
(BatchNorm on batch statistics), as theirs (``loop``). Loss: ``loss.focal_loss``.

A run folder holds ``epoch_NNN.safetensors`` and ``last.safetensors`` (our checkpoints),
``train_state.safetensors`` (``state``: what ``resume`` needs to continue as if never stopped)
and ``metrics.jsonl``.

    from inctrl.training import TrainConfig, train
    summary = train(["mvtec/"], "runs/k2", TrainConfig(shots=2), clip_weights="vit_b_16_plus.pt")

Names load on first use: ``TrainConfig`` (and the command line that shows its defaults) does not
import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "LOSS_FORMS": "inctrl.training.config",
    "TrainConfig": "inctrl.training.config",
    "focal_loss": "inctrl.training.loss",
    "is_main_process": "inctrl.training.config",
    "train": "inctrl.training.loop",
}

__all__ = ["LOSS_FORMS", "TrainConfig", "focal_loss", "is_main_process", "train"]

if TYPE_CHECKING:
    from inctrl.training.config import LOSS_FORMS, TrainConfig, is_main_process
    from inctrl.training.loop import train
    from inctrl.training.loss import focal_loss


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'inctrl.training' has no attribute {name!r}")
