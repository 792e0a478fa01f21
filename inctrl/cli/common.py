"""What every ``inctrl`` command shares: the typer apps and the options several declare (the
console helpers are ``inctrl_runtime.console``'s)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from inctrl_runtime.console import new_app

app = new_app(
    "inctrl",
    "InCTRL few-shot anomaly detection: score images against a few normal examples.",
)
data_app = typer.Typer(help="Data sets: synthetic data, JSON indexes.", no_args_is_help=True)
prompts_app = typer.Typer(help="Few-shot prompt sets (k normal images).", no_args_is_help=True)
demo_app = typer.Typer(
    help="The embedded demo model: facts, and how to rebuild it.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(demo_app, name="demo")
app.add_typer(prompts_app, name="prompts")


@app.callback()
def _root() -> None:
    """InCTRL few-shot anomaly detection (torch side)."""


# Options that several commands share, declared once.
ModelCheckpoint = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        "-c",
        help="InCTRL checkpoint: the authors' .pyth or ours. Default: the embedded demo model.",
        show_default=False,
    ),
]
ClipWeights = Annotated[
    Path | None,
    typer.Option(
        "--clip-weights",
        help="open_clip weights file, for our checkpoints that hold head weights only.",
        show_default=False,
    ),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")]
