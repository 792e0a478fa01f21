"""Progress of a long bench on stderr: a spinner with the current step for a person watching,
one line per finished backend otherwise. Measurements call ``step`` and ``done``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from inctrl_runtime.console import interactive, stderr


class Progress:
    """Silent progress: what the Python API gets unless it asks for more."""

    def step(self, message: str) -> None:
        """What is being measured now."""

    def done(self, message: str) -> None:
        """Something finished that is worth a line."""


class ConsoleProgress(Progress):
    """Progress on stderr: ``step`` updates a spinner (only when interactive), ``done`` prints."""

    def __init__(self, status=None) -> None:
        self.status = status

    def step(self, message: str) -> None:
        if self.status is not None:
            self.status.update(message)

    def done(self, message: str) -> None:
        stderr.print(message, markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def console_progress() -> Iterator[ConsoleProgress]:
    """Progress on stderr for the length of the block."""
    if not interactive():
        yield ConsoleProgress()
        return
    with stderr.status("starting", spinner="dots") as status:
        yield ConsoleProgress(status)
