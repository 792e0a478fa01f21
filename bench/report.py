"""The bench on a terminal: a few narrow tables (readable at 80 columns) and the speed-ups."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rich import box
from rich.console import Console
from rich.table import Table

from inctrl_bench.measure import BackendResult
from inctrl_bench.runners import QUERY_STAGES
from inctrl_bench.suite import REFERENCES, BenchReport

MISSING = "-"
Cell = Callable[[BackendResult], str]


def number(value: float | None) -> str:
    """Three significant figures, without exponents."""
    if value is None:
        return MISSING
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 10 else f"{value:.2f}"


def times(value: float | None) -> str:
    return MISSING if value is None else f"{number(value)}x"


def _table(
    title: str, columns: Sequence[str], results: list[BackendResult], cells: list[Cell]
) -> Table:
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1))
    table.add_column("backend", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for result in results:
        if result.available:
            table.add_row(result.name, *(cell(result) for cell in cells))
        else:
            table.add_row(result.name, "n/a", *[MISSING] * (len(cells) - 1), style="dim")
    return table


def _stage(stage: str | None) -> Cell:
    """The median of a stage at batch 1; None: every stage the query path does not have."""

    def cell(result: BackendResult) -> str:
        stages = result.latency.stages_ms
        if stage is not None:
            return number(stages.get(stage))
        others = [ms for name, ms in stages.items() if name not in QUERY_STAGES]
        return number(sum(others)) if others else MISSING

    return cell


def latency_table(report: BenchReport) -> Table:
    shots = report.settings["shots"][0]
    cells: list[Cell] = [
        lambda r: number(r.latency.p50_ms),
        lambda r: number(r.latency.p90_ms),
        lambda r: number(r.latency.p99_ms),
        *(_stage(stage) for stage in QUERY_STAGES),
        _stage(None),
    ]
    columns = ["p50", "p90", "p99", "prep", "enc", "head", "other"]
    title = f"Latency per query, batch 1, k={shots} (ms; stages prep/enc/head: medians)"
    return _table(title, columns, report.backends, cells)


def _throughput_at(batch: int) -> Cell:
    def cell(result: BackendResult) -> str:
        found = [t.images_per_s for t in result.throughput if t.batch == batch]
        return number(found[0]) if found else MISSING

    return cell


def throughput_table(report: BenchReport) -> Table:
    batches = report.settings["batches"]
    memory = "GPU MB" if report.settings["device"] == "cuda" else "RSS MB"
    cells: list[Cell] = [
        *(_throughput_at(b) for b in batches),
        lambda r: number(r.achieved_gflops),
        lambda r: number(r.peak_percent),
        lambda r: number(r.gpu_peak_mb if memory == "GPU MB" else r.peak_rss_mb),
    ]
    columns = [*(f"b={b}" for b in batches), "GFLOP/s", "% peak", memory]
    title = "Throughput (images/s); GFLOP/s and % of fp32 peak at the largest batch"
    scopes = sorted({r.peak_rss_scope for r in report.backends if r.peak_rss_scope})
    if memory == "RSS MB" and scopes:
        title += f"; RSS MB: {'; '.join(scopes)}"
    return _table(title, columns, report.backends, cells)


def speedup_table(report: BenchReport) -> Table:
    cells: list[Cell] = []
    columns: list[str] = []
    for reference, attribute in REFERENCES.items():
        for key, label in (("latency", "latency"), ("throughput", "images/s")):
            columns.append(f"{reference} {label}")
            cells.append(lambda r, a=attribute, k=key: times((getattr(r, a) or {}).get(k)))
    title = "Speed-up: latency at batch 1, images/s at each one's largest batch"
    return _table(title, columns, report.backends, cells)


def registration_table(report: BenchReport) -> Table:
    shots = report.settings["shots"]

    def at(k: int) -> Cell:
        def cell(result: BackendResult) -> str:
            found = [r.timing.p50_ms for r in result.registration if r.shots == k]
            return number(found[0]) if found else MISSING

        return cell

    title = "Registration of k prompts (ms, median)"
    return _table(title, [f"k={k}" for k in shots], report.backends, [at(k) for k in shots])


def header_lines(report: BenchReport) -> list[str]:
    machine, peak = report.machine, report.peak
    gpu = f", GPU {', '.join(machine['gpu'])}" if machine["gpu"] else ""
    peak_text = peak.method
    if peak.gflops:
        rates = ", ".join(f"{name} {rate:.0f}" for name, rate in peak.rates.items())
        peak_text = f"{peak.gflops:.0f} GFLOP/s, {peak.method} (GFLOP/s: {rates})"
    lines = [
        f"model: {report.model}; category {report.category!r}",
        f"machine: {machine['cpu']}, {machine['cores']} cores{gpu}; device "
        f"{report.settings['device']}",
        f"fp32 peak: {peak_text}",
    ]
    for name, flops in report.flops().items():
        heads = ", ".join(f"k={k} {v / 1e9:.3g}" for k, v in flops["head_per_query"].items())
        encoder = flops["encoder_per_image"]["total"] / 1e9
        lines.append(f"GFLOP ({name}): encoder {encoder:.3g} per image; head {heads} per query")
    return lines + [f"note: {note}" for note in report.notes]


def print_report(report: BenchReport, console: Console | None = None) -> None:
    """The tables, then why each unavailable backend is so."""
    console = console or Console()
    for line in header_lines(report):
        console.print(line, markup=False, highlight=False)
    for table in (latency_table, throughput_table, speedup_table, registration_table):
        console.print(table(report))
    unavailable = [r for r in report.backends if not r.available]
    if unavailable:
        console.print("Not available:", markup=False)
    for result in unavailable:
        console.print(f"  {result.name}: {result.reason}", markup=False, highlight=False)
