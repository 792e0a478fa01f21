"""The embedded demo model: what commands use when no checkpoint is named.

It is a reduced ViT (preset ``demo``) with a seeded, untrained backbone and heads trained on
``inctrl data synth`` data. It shows the tool working on a fresh machine; it is not a model for
real inspection. README.md gives the command that rebuilds it.
"""

from __future__ import annotations

import os
from pathlib import Path

from inctrl.errors import InputError

DEMO_CHECKPOINT = Path(__file__).parent / "assets" / "demo.safetensors"
DEMO_NOTICE = "using the embedded DEMO model (synthetic data only, not for real inspection)"


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
    notice=None,
):
    """Load a named checkpoint, or the demo model when none is named (calling ``notice`` with
    a one-line warning, so that a demo score is never mistaken for a real one)."""
    from inctrl.model import InCTRL

    path, is_demo = resolve_checkpoint(checkpoint)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    if is_demo and notice is not None:
        notice(DEMO_NOTICE)
    return InCTRL.from_checkpoint(path, clip_weights, device=device, precision=precision)
