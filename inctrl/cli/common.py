"""What every ``inctrl`` command shares: the typer apps, the stderr console, progress helpers."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from inctrl.errors import InputError

app = typer.Typer(
    name="inctrl",
    help="InCTRL few-shot anomaly detection: score images against a few normal examples.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Data sets: synthetic data, JSON indexes.", no_args_is_help=True)
prompts_app = typer.Typer(help="Few-shot prompt sets (k normal images).", no_args_is_help=True)
demo_app = typer.Typer(
    help="The embedded demo model: facts, and how to rebuild it.", no_args_is_help=True
)
app.add_typer(data_app, name="data")
app.add_typer(demo_app, name="demo")
app.add_typer(prompts_app, name="prompts")

stderr = Console(stderr=True)


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


def interactive() -> bool:
    """Progress bars and spinners go to stderr, and only when a person is watching."""
    return sys.stderr.isatty()


def status(message: str) -> contextlib.AbstractContextManager:
    """A spinner on stderr while something slow runs (nothing when not interactive)."""
    return stderr.status(message, spinner="dots") if interactive() else contextlib.nullcontext()


def warn(message: str) -> None:
    """One line on stderr that a person should see (never on stdout, which may carry JSON)."""
    stderr.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)


def require_files(paths: Sequence[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file")
