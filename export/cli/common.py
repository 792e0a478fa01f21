"""What the ``inctrl-export`` commands share: the app, the options several of them take, the
lines an export prints as it goes, and the parity report's table, JSON and exit code."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import typer

from inctrl_runtime.console import Interrupted, new_app, say, stderr

EXIT_PARITY_FAILED = 1

app = new_app(
    "inctrl-export",
    (
        "Export InCTRL to a bundle (ONNX encoder + head, text priors, manifest) for the lean "
        "runtime (inctrl-run), build TensorRT engines for a bundle, and check any bundle against "
        "PyTorch."
    ),
)

Checkpoint = typer.Option(
    None,
    "--checkpoint",
    "-c",
    help="InCTRL checkpoint: the authors' .pyth or ours. Default: the embedded DEMO model.",
    show_default=False,
)
SourceCheckpoint = typer.Option(
    None,
    "--checkpoint",
    "-c",
    help="The checkpoint the bundle was exported from (the manifest records its file name and "
    "sha256, which must match). Default, for a demo bundle: the embedded DEMO model.",
    show_default=False,
)
ClipWeights = typer.Option(
    None,
    "--clip-weights",
    help="open_clip weights file, for our checkpoints that hold head weights only.",
    show_default=False,
)
Atol = typer.Option(
    None,
    "--atol",
    help="Pass mark for the max abs difference of the judged outputs. Default: the parity "
    "contract: every head output within 1e-4 for fp32, 5e-3 for fp16; int8's outputs are "
    "reported only (int8 is judged by its AUROC change on labelled images, at most 0.01).",
    show_default=False,
)

JsonReport = typer.Option(
    None,
    "--json",
    help="Write the parity report as JSON to this file (- for stdout).",
    show_default=False,
)


@contextlib.contextmanager
def left_as_it_was(out: Path) -> Iterator[None]:
    """Say, when a signal ends an export before its bundle is in place, that ``out`` is as it
    was (no bundle, or the old one: the new one is built aside and renamed last)."""
    try:
        yield
    except Interrupted:
        say(f"{out}: left as it was (the new bundle was not complete)")
        raise


@contextlib.contextmanager
def exit_1_on(refusal: type[Exception]) -> Iterator[None]:
    """A measured refusal (not a user's mistake): its line, and exit code 1."""
    try:
        yield
    except refusal as err:
        say(f"error: {err}")
        raise typer.Exit(EXIT_PARITY_FAILED) from None


def log_step(message: str) -> None:
    """One finished step of a long command, indented under its status line."""
    say(f"  {message}")


def print_report(report, json_file: Path | None) -> None:
    """The parity report's table on stderr, its JSON where asked (- for stdout), and exit code
    1 (``EXIT_PARITY_FAILED``) with the line that says why when it did not pass."""
    from inctrl_runtime.files import write_json

    stderr.print(report.table())
    if json_file is not None:
        if str(json_file) == "-":
            sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        else:
            write_json(json_file, report.to_dict())
    if not report.passed:
        judged = [d for d in report.outputs if d.judged]
        worst = max(judged, key=lambda d: d.max_abs) if judged else None
        if worst is None or worst.passes:
            say(
                f"error: parity FAILED: the image AUROC changed by {report.auroc['change']:+.4f}, "
                f"past the mark {report.auroc_mark:g}"
            )
        else:
            say(
                f"error: parity FAILED: {worst.name} differs by {worst.max_abs:.2e} > atol "
                f"{report.atol:g} (see the table; --atol to change the mark)"
            )
        raise typer.Exit(EXIT_PARITY_FAILED)
