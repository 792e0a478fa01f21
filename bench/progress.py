"""Progress of a long bench on stderr: a spinner with the current step for a person watching,
one line per finished backend otherwise. Measurements call ``step`` and ``done``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.status import Status

from inctrl_runtime.console import say, status


class Progress:
    """Silent progress: what the Python API gets unless it asks for more."""

    def step(self, message: str) -> None:
        """What is being measured now."""

    def done(self, message: str) -> None:
        """Something finished that is worth a line."""


class ConsoleProgress(Progress):
    """Progress on stderr: ``step`` updates a spinner (only when interactive), ``done`` prints."""

    def __init__(self, spinner: Status | None = None) -> None:
        self.spinner = spinner

    def step(self, message: str) -> None:
        if self.spinner is not None:
            self.spinner.update(message)

    def done(self, message: str) -> None:
        say(message)


@contextlib.contextmanager
def console_progress() -> Iterator[ConsoleProgress]:
    """Progress on stderr for the length of the block (a spinner only when interactive)."""
    with status("starting") as spinner:
        yield ConsoleProgress(spinner)
