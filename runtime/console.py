"""What every command line of the project shares: stderr, progress, one-line errors, exit codes.

Progress and notes go to stderr (stdout may carry JSON); user mistakes print one line
(``error: ...``) and exit with code 2, never a traceback.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from inctrl_runtime.errors import InputError

EXIT_INPUT_ERROR = 2

stderr = Console(stderr=True)

# Options of the scoring commands (``inctrl score``, ``inctrl-run score``), declared once.
QueryImages = Annotated[
    list[Path] | None,
    typer.Argument(help="Query images to score (png, jpg, ..., npy).", show_default=False),
]
BatchSize = Annotated[int, typer.Option(help="Query images per encoder pass.")]
Heatmaps = Annotated[
    Path | None,
    typer.Option(
        help="Write a heatmap PNG per query (patch residuals over the image) here.",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")]


def new_app(name: str, help: str, no_args_is_help: bool = True) -> typer.Typer:
    """A typer app as all of ours are: help when run bare, no shell-completion installer, and no
    rich tracebacks (user mistakes are one line; anything else is a bug worth a plain trace)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=no_args_is_help,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def interactive() -> bool:
    """Progress bars and spinners go to stderr, and only when a person is watching."""
    return sys.stderr.isatty()


def status(message: str) -> contextlib.AbstractContextManager:
    """A spinner on stderr while something slow runs (nothing when not interactive)."""
    return stderr.status(message, spinner="dots") if interactive() else contextlib.nullcontext()


def say(message: str) -> None:
    """One unwrapped line on stderr (never on stdout, which may carry JSON)."""
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A note a person should see, on one line of stderr."""
    say(f"note: {message}")


def require_category(category: str | None) -> str:
    """The --category every scoring command needs."""
    if not category:
        raise InputError("no --category given: name the product category, e.g. --category candle")
    return category


def require_files(paths: Sequence[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file")


def run_app(app: typer.Typer, prog_name: str, argv: Sequence[str] | None = None) -> None:
    """Run a typer app, turning user mistakes into one line and exit code 2, and Python
    warnings (a provider fallback, a demo model) into notes."""

    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        warn(str(message))

    warnings.showwarning = show_warning
    try:
        app(args=argv, prog_name=prog_name, standalone_mode=True)
    except InputError as err:
        say(f"error: {err}")
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
