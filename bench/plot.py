"""The bench as a picture: latency per query against batch size, and the speed-ups (PNG)."""

from __future__ import annotations

import os

import numpy as np

from inctrl_bench.backends import import_problem
from inctrl_bench.report import times
from inctrl_bench.suite import REFERENCES, BenchReport
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path


def check_plotting() -> None:
    """Refuse --plot before a long run when matplotlib is missing."""
    problem = import_problem("matplotlib")
    if problem is not None:
        raise InputError(f"--plot needs matplotlib ({problem}): install inctrl[torch] or drop it")


def _latency_axis(axis, report: BenchReport) -> None:
    for result in report.backends:
        if result.available:
            batches = [t.batch for t in result.throughput]
            axis.plot(batches, [t.ms_per_image for t in result.throughput], "o-", label=result.name)
    axis.set_xscale("log", base=2)
    batches = report.settings["batches"]
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.minorticks_off()
    axis.set_yscale("log")
    axis.set_xlabel("batch size")
    axis.set_ylabel("ms per query (median)")
    axis.set_title("latency per query", fontsize=10)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)


def _speedup_axis(axis, report: BenchReport) -> None:
    reference = "authors" if any(r.speedup_vs_authors for r in report.backends) else "torch-fp32"
    attribute = REFERENCES[reference]
    rows = [(r.name, getattr(r, attribute)) for r in report.backends if getattr(r, attribute)]
    axis.set_title(f"speed-up over {reference}", fontsize=10)
    if not rows:
        axis.text(0.5, 0.5, f"{reference} not measured", ha="center", transform=axis.transAxes)
        return
    positions = np.arange(len(rows))
    series = (
        ("latency", "latency, batch 1", -0.2),
        ("throughput", "throughput, largest batch", 0.2),
    )
    for key, label, offset in series:
        values = [speedup[key] for _, speedup in rows]
        bars = axis.barh(positions + offset, values, height=0.4, label=label)
        axis.bar_label(bars, labels=[times(v) for v in values], fontsize=7, padding=2)
    axis.set_yticks(positions, [name for name, _ in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.axvline(1.0, color="0.5", linewidth=1)
    axis.set_xlabel(f"speed-up over {reference}")
    axis.legend(fontsize=7)


def write_plot(report: BenchReport, path: str | os.PathLike) -> None:
    """Write the PNG: latency per query vs batch per backend, and speed-up bars."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.8))
    latency_axis, speedup_axis = figure.subplots(1, 2)
    _latency_axis(latency_axis, report)
    _speedup_axis(speedup_axis, report)
    figure.suptitle(f"inctrl-bench: {report.model}, {report.machine['cpu']}", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
