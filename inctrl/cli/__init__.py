"""The ``inctrl`` command line (torch side). Commands are thin: they parse and call typed functions.

User mistakes print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# Importing the command modules registers their commands on the app.
from inctrl.cli import data, demo, evaluate, prompts, score, train  # noqa: F401
from inctrl.cli.common import app, stderr
from inctrl.errors import InputError

EXIT_INPUT_ERROR = 2


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: runs the app, turning user mistakes into one line and exit code 2."""
    try:
        app(args=argv, prog_name="inctrl", standalone_mode=True)
    except InputError as err:
        stderr.print(f"error: {err}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        sys.exit(130)
