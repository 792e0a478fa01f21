"""The settings of a training run (torch-free, so that the command line can show defaults)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from inctrl_runtime.errors import InputError

LOSS_FORMS = ("authors", "focal")


@dataclass(frozen=True)
class TrainConfig:
    """How a run trains; the defaults are the paper's (k = 2; the authors also train 4 and 8)."""

    shots: int = 2
    epochs: int = 10
    steps_per_epoch: int = 100
    batch_size: int = 16  # queries per step, over all processes
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.01  # torch's AdamW default, which the authors keep
    seed: int = 0
    loss: str = "authors"  # their focal loss quirk, or "focal" (see inctrl.training.loss)

    def __post_init__(self) -> None:
        for name in ("shots", "epochs", "steps_per_epoch"):
            if getattr(self, name) < 1:
                raise InputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise InputError(
                f"batch size must be at least 2 (normal and anomalous queries), got "
                f"{self.batch_size}"
            )
        if not self.lr > 0:
            raise InputError(f"learning rate must be positive, got {self.lr}")
        if self.loss not in LOSS_FORMS:
            raise InputError(f"unknown loss {self.loss!r}; choose one of: {', '.join(LOSS_FORMS)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        return cls(**{**data, "betas": tuple(data["betas"])})

    def changes(self, other: TrainConfig, ignore: tuple[str, ...] = ()) -> list[str]:
        """``name old -> new`` for each field that differs in ``other``."""
        return [
            f"{f.name} {getattr(self, f.name)!r} -> {getattr(other, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name not in ignore and getattr(self, f.name) != getattr(other, f.name)
        ]


def is_main_process() -> bool:
    """False only in the non-zero ranks of a torchrun job; the main process writes and prints."""
    return int(os.environ.get("RANK", "0")) == 0
