"""``inctrl-run``: register normal examples, calibrate, score images with a bundle, say what a
bundle holds, and serve it on Triton; no torch needed. Commands are thin: each parses and calls
one typed function (``run_*``) that the tests also call.
"""

from __future__ import annotations

from collections.abc import Sequence

# Importing the command modules registers their commands on the app.
from inctrl_runtime.cli import client, info, monitor, register, score, serve  # noqa: F401
from inctrl_runtime.cli.common import app
from inctrl_runtime.console import run_app

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-run``."""
    run_app(app, "inctrl-run", argv)
