"""Which checkpoint a command loads, and loading it: the named file, else the embedded demo."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from inctrl.demo import DEMO_CHECKPOINT, DEMO_NOTICE
from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl.model import InCTRL


def resolve_checkpoint(checkpoint: str | os.PathLike | None) -> tuple[Path, bool]:
    """The checkpoint to load and whether it is the demo: the named file, else the demo."""
    if checkpoint is not None:
        return Path(checkpoint), False
    if not DEMO_CHECKPOINT.is_file():
        raise InputError(
            f"no --checkpoint given and the embedded demo model is missing ({DEMO_CHECKPOINT}); "
            "name a checkpoint or rebuild the demo (README, 'Embedded demo model')"
        )
    return DEMO_CHECKPOINT, True


def load_model(
    checkpoint: str | os.PathLike | None,
    clip_weights: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str = "fp32",
    notice: Callable[[str], None] | None = None,
) -> InCTRL:
    """Load a named checkpoint, or the demo model when none is named (calling ``notice`` with
    a one-line warning, so that a demo score is never mistaken for a real one)."""
    from inctrl.model import InCTRL

    path, is_demo = resolve_checkpoint(checkpoint)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if is_demo and notice is not None:
        notice(DEMO_NOTICE)
    return InCTRL.from_checkpoint(path, clip_weights, device=device, precision=precision)
