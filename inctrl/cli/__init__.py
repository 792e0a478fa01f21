"""The ``inctrl`` command line (torch side). Commands are thin: they parse and call typed functions.

User mistakes print one line on stderr and exit with code 2.
"""

from __future__ import annotations

from collections.abc import Sequence

# Importing the command modules registers their commands on the app.
from inctrl.cli import data, demo, evaluate, prompts, score, train  # noqa: F401
from inctrl.cli.common import app
from inctrl_runtime.console import EXIT_INPUT_ERROR, run_app

__all__ = ["EXIT_INPUT_ERROR", "main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs the app, turning user mistakes into one line and exit code 2."""
    run_app(app, "inctrl", argv)
