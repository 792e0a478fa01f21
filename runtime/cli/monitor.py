"""``inctrl-run monitor``: a calibrated category's drift monitor, its status and history, a
picture of its evidence, and a reset (``inctrl_runtime.drift_store``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import typer

from inctrl_runtime.cli.common import BundleArgument, CategoryOption, app
from inctrl_runtime.console import DriftDelta, require_category, say
from inctrl_runtime.drift import DEFAULT_DELTA, check_delta
from inctrl_runtime.drift_store import DriftMonitor, Status
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path, check_output_path

HISTORY_ROWS = 10  # parts shown in the table's history: evenly spread over the stream


def open_monitor(bundle: Path, category: str | None) -> DriftMonitor:
    """The drift monitor of a registered, calibrated category of ``bundle`` (no engine opens:
    the bank's calibration is all it needs)."""
    from inctrl_runtime.bundle import Bundle
    from inctrl_runtime.references import load_registered

    require_category(category)
    opened = Bundle.open(bundle, check_files=False)
    opened.prior(category)
    return DriftMonitor(opened.path, category, load_registered(opened, category))


def run_monitor(
    bundle: Path,
    category: str | None,
    plot: Path | None = None,
    reset: bool = False,
    delta: float = DEFAULT_DELTA,
) -> tuple[Status, np.ndarray]:
    """A category's monitor status and history (``RECORD`` per part), after a ``reset`` where
    asked; ``plot`` writes the picture of its evidence (``drift_plot``), atomically."""
    check_delta(delta)
    if plot is not None:
        check_output_path(plot, "--plot")
        if plot.suffix.lower() != ".png":
            raise InputError(f"--plot {plot}: name a .png file")
    monitor = open_monitor(bundle, category)
    if reset:
        monitor.reset()
    history = monitor.history()
    status = monitor.status()
    if plot is not None:
        from inctrl_runtime.drift_plot import evidence_picture

        title = (
            f"drift evidence of {category}: {status.observed} parts, calibration n = "
            f"{status.calibration}"
        )
        with atomic_path(plot) as tmp:
            evidence_picture(history["evidence"], delta, title).save(tmp, format="PNG")
    return status, history


@app.command()
def monitor(
    bundle: Path = BundleArgument,
    category: str = CategoryOption,
    plot: Path = typer.Option(
        None,
        "--plot",
        help="Draw the evidence over the parts, with the alarm level, as a PNG.",
        show_default=False,
    ),
    reset: bool = typer.Option(
        False,
        "--reset",
        help="Start the monitor again (after the line is fixed and the category calibrated "
        "again; a new calibration or registration starts it again by itself).",
    ),
    delta: DriftDelta = DEFAULT_DELTA,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON."),
) -> None:
    """Show a category's drift monitor: are its parts still like its calibration's?

    Every part scored with `inctrl-run score --monitor` (or served by Triton) ranks against the
    calibration's scores and the parts before it; under no drift the evidence stays low, and it
    reaches 1/delta with probability at most delta over the whole stream of good parts. Shows
    the parts seen since the last reset, the evidence now and at its highest, the alarm, the
    share of parts flagged, and the evidence along the stream.

    Examples:

        inctrl-run monitor bundle/ --category candle --plot drift.png

        inctrl-run monitor bundle/ --category candle --reset
    """
    status, history = run_monitor(bundle, category, plot, reset, delta)
    if as_json:
        sys.stdout.write(json.dumps(status.record(delta), indent=1) + "\n")
    else:
        _print_status(status, history, delta)
    if reset:
        say(f"{category}: the drift monitor starts again")
    if plot is not None:
        say(f"wrote {plot}")


def _print_status(status: Status, history: np.ndarray, delta: float) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"drift monitor of {status.category}", show_header=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column()
    alarm = "ALARM" if status.alarm(delta) else "none"
    rate = "-" if status.flag_rate is None else f"{status.flag_rate:.3f} ({status.flagged})"
    rows = [
        ("parts seen", f"{status.observed} since the last reset"),
        ("calibration", f"n = {status.calibration}"),
        ("evidence", f"{status.evidence:.4g} now, {status.peak:.4g} at most (part "
                     f"{status.peak_at})"),
        ("alarm", f"{alarm} (at evidence {1 / delta:g} = 1/delta, delta {delta:g})"),
        ("leaning", f"scores {status.direction}: the bet on scores drifting "
                    f"{status.direction} holds more of the evidence"),
        ("flagged", rate),
    ]  # fmt: skip
    if len(history):
        shown = np.unique(np.linspace(0, len(history) - 1, HISTORY_ROWS).round().astype(int))
        rows.append(("history", ", ".join(
            f"{i + 1}: {history['evidence'][i]:.3g}" for i in shown)))  # fmt: skip
    for row in rows:
        table.add_row(*row)
    Console().print(table)
