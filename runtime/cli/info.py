"""``inctrl-run info``: what a bundle holds, as tables or JSON (``inctrl_runtime.info``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from inctrl_runtime.cli.common import BundleArgument, app


def run_info(bundle: Path) -> dict:
    """What a bundle holds, as ``inctrl-run info --json`` prints it (``info.bundle_info``)."""
    from inctrl_runtime.info import bundle_info

    return bundle_info(bundle)


@app.command()
def info(
    bundle: Path = BundleArgument,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Say what a bundle holds.

    The model and its precision, the export check, the TensorRT builds, and per category its
    text prior, registered bank (k, sources, date) and calibration (n, backend, date,
    thresholds at false-positive rates 0.01, 0.05, 0.1).

    Example: inctrl-run info bundle/ --json
    """
    found = run_info(bundle)
    if as_json:
        sys.stdout.write(json.dumps(found, indent=1) + "\n")
    else:
        _print_info(found)


def _print_info(found: dict) -> None:
    """``run_info`` as a two-column table on stdout: the bundle, then a section per category."""
    from rich.console import Console
    from rich.table import Table

    from inctrl_runtime.info import info_sections

    table = Table(title=f"bundle {found['bundle']}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for index, rows in enumerate(info_sections(found)):
        if index:
            table.add_section()
        for row in rows:
            table.add_row(*row)
    Console().print(table)
