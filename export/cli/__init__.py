"""``inctrl-export``: InCTRL checkpoints -> deployable bundles, checked against PyTorch.

One module per command, each a thin typer function that calls one typed function; this module
wires them, in the order ``--help`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence

from inctrl_export.cli.common import EXIT_PARITY_FAILED, app
from inctrl_export.cli.engines import tensorrt
from inctrl_export.cli.onnx_export import onnx
from inctrl_export.cli.repository import triton
from inctrl_export.cli.verify import verify_command
from inctrl_runtime.console import run_app

__all__ = ["EXIT_PARITY_FAILED", "app", "main"]

app.command("onnx")(onnx)
app.command("verify")(verify_command)
app.command("tensorrt")(tensorrt)
app.command("triton")(triton)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-export``."""
    run_app(app, "inctrl-export", argv)
