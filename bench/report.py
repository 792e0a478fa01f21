"""The bench for a person: terminal tables (80 columns wide) and a PNG of latency and speed-ups."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
from rich import box
from rich.console import Console
from rich.table import Table

from inctrl_bench.accuracy import REGION_FPRS, describe_data
from inctrl_bench.measure import QUERY_STAGES, BackendResult
from inctrl_bench.suite import SPEEDUP_BASELINES, BenchReport
from inctrl_bench.triton_backend import served_table
from inctrl_runtime.files import atomic_path

MISSING = "-"
WIDTH = 80  # the terminal width the tables are laid out for
Cell = Callable[[BackendResult], str]


def number(value: float | None) -> str:
    """Three significant figures, without exponents."""
    if value is None:
        return MISSING
    digits = 0 if abs(value) >= 100 else 1 if abs(value) >= 10 else 2
    return f"{value:.{digits}f}"


def times(value: float | None) -> str:
    return MISSING if value is None else f"{number(value)}x"


def drift(value: float | None) -> str:
    """A score difference in two significant figures, exponent form."""
    return MISSING if value is None else f"{value:.1e}"


def _precision(result: BackendResult) -> str:
    """The row's precision; an int8 row's names its split (which block products are fp32)."""
    quantization = result.quantization
    if quantization is None:
        return result.precision
    fp32 = quantization.get("fp32_products") or []
    if not fp32:
        return f"{result.precision}, every product"
    choices = quantization.get("fp32_choices") or [f"{len(fp32)} products"]
    return f"{result.precision}, fp32 {', '.join(choices)}"


def _accuracy_columns() -> dict[str, Cell]:
    """With --eval: the row's precision, image AUROC (mean and worst category) and its final
    score's drift against torch-fp32 on the same queries."""
    return {
        "precision": _precision,
        "AUROC": lambda r: f"{r.accuracy.mean_auroc:.3f}",
        "worst": lambda r: f"{min(r.accuracy.auroc.values()):.3f}",
        "max drift": lambda r: drift(r.accuracy.drift_max_abs),
        "mean drift": lambda r: drift(r.accuracy.drift_mean_abs),
    }


def _metric(value: float | None) -> str:
    """A metric in [0, 1], three decimals as the AUROC column."""
    return MISSING if value is None else f"{value:.3f}"


def _rates(values: tuple[float | None, float | None]) -> str:
    """'recall/flagged' (two decimals, '-' for one that is undefined), or '-'."""
    if values == (None, None):
        return MISSING
    return "/".join(MISSING if value is None else f"{value:.2f}" for value in values)


def _pixel_columns(limit: float) -> dict[str, Cell]:
    """With --eval on data with masks: pixel AUROC and AUPRO (means over the categories with
    masks), then at each region rate the region recall / good-part region-flag rate."""
    columns: dict[str, Cell] = {
        "pixel AUROC": lambda r: _metric(r.accuracy.mean_pixel_auroc),
        f"AUPRO@{limit:g}": lambda r: _metric(r.accuracy.mean_aupro),
    }
    for index, alpha in enumerate(REGION_FPRS):
        columns[f"{alpha:g}: R/F"] = lambda r, i=index: _rates(r.accuracy.region_means(i))
    return columns


def _stage(result: BackendResult, stage: str | None) -> float | None:
    """A stage's median at batch 1; None: all stages outside the query path, summed."""
    stages = result.latency.stages_ms
    others = [ms for name, ms in stages.items() if name not in QUERY_STAGES]
    return stages.get(stage) if stage else (sum(others) if others else None)


def _engine_columns() -> dict[str, Cell]:
    """The TensorRT rows' build (plans, build time, size) and GPU time beside wall time."""
    return {
        "build": lambda r: r.engine_build or MISSING,
        "build s": lambda r: number(r.build_s),
        "plans MB": lambda r: number(r.plan_mb),
        "GPU ms": lambda r: number(r.latency.gpu_p50_ms),
        "wall ms": lambda r: number(r.latency.p50_ms),
    }


def _tables(report: BenchReport) -> list[tuple[str, dict[str, Cell], list[BackendResult]]]:
    """The tables: each one's title, columns (header -> the cell of one backend) and rows."""
    batches, shots = report.settings["batches"], report.settings["shots"]
    latency: dict[str, Cell] = {
        "p50": lambda r: number(r.latency.p50_ms),
        "p90": lambda r: number(r.latency.p90_ms),
        "p99": lambda r: number(r.latency.p99_ms),
    }
    for header, stage in zip(("prep", "enc", "head", "other"), (*QUERY_STAGES, None), strict=True):
        latency[header] = lambda r, s=stage: number(_stage(r, s))
    throughput: dict[str, Cell] = {
        f"b={b}": lambda r, b=b: number({t.batch: t.images_per_s for t in r.throughput}.get(b))
        for b in batches
    }
    throughput["GFLOP/s"] = lambda r: number(r.achieved_gflops)
    throughput["% peak"] = lambda r: number(r.peak_percent)
    on_gpu = report.settings["device"] == "cuda"
    memory = "GPU MB" if on_gpu else "RSS MB"
    throughput[memory] = lambda r: number(r.gpu_peak_mb if on_gpu else r.peak_rss_mb)
    throughput_title = "Throughput (images/s); GFLOP/s and % of fp32 peak at the largest batch"
    scopes = sorted({r.peak_rss_scope for r in report.backends if r.peak_rss_scope})
    if scopes and not on_gpu:
        throughput_title += f"; RSS MB: {'; '.join(scopes)}"
    speedup: dict[str, Cell] = {
        f"{baseline} {label}": lambda r, a=attribute, k=key: times((getattr(r, a) or {}).get(k))
        for baseline, attribute in SPEEDUP_BASELINES.items()
        for key, label in (("latency", "latency"), ("throughput", "images/s"))
    }
    registration: dict[str, Cell] = {
        f"k={k}": lambda r, k=k: number({g.shots: g.timing.p50_ms for g in r.registration}.get(k))
        for k in shots
    }
    tables = [
        (f"Latency per query, batch 1, k={shots[0]} (ms; stages prep/enc/head: medians)", latency),
        (throughput_title, throughput),
        ("Speed-up: latency at batch 1, images/s at each one's largest batch", speedup),
        ("Registration of k prompts (ms, median)", registration),
    ]
    found = [(title, columns, report.backends) for title, columns in tables]
    built = [r for r in report.backends if r.engine_build is not None]
    if built:
        title = (
            "TensorRT engines: build time and size of both plans; per query at batch 1, "
            f"k={shots[0]}: GPU time (CUDA events) and wall-clock (ms, medians)"
        )
        found.append((title, _engine_columns(), built))
    scored = [r for r in report.backends if r.accuracy is not None]
    if scored:
        data, reference = report.eval_data, scored[0].accuracy.drift_reference
        drifts = f"|final score - {reference}'s|" if reference else "not measured (see notes)"
        title = (
            f"Accuracy on {data['name']} ({data['images']} test images, k={data['shots']}): "
            f"image AUROC (mean over categories, worst one); drift: {drifts}, max and mean"
        )
        found.append((title, _accuracy_columns(), scored))
        if any(r.accuracy.mean_pixel_auroc is not None for r in scored):
            limit = scored[0].accuracy.aupro_limit
            title = (
                f"Pixels on {data['name']} (categories with masks, mean): pixel AUROC, AUPRO to "
                f"FPR {limit:g}; at each rate's region threshold (map maxima of train/good less "
                "the k prompts), R: share of defect regions touched, F: share of test normals "
                "with a region (-: too few images or no masks)"
            )
            found.append((title, _pixel_columns(limit), scored))
        if len(data["categories"]) > 1:
            room = WIDTH - max(len(r.name) for r in scored) - 1
            for names in _column_groups(list(data["categories"]), room):
                per_category: dict[str, Cell] = {
                    name: lambda r, n=name: f"{r.accuracy.auroc[n]:.3f}" for name in names
                }
                found.append((f"Image AUROC per category of {data['name']}", per_category, scored))
    return found


def _column_groups(headers: list[str], room: int) -> list[list[str]]:
    """``headers`` in order, cut into groups whose columns (a 5-character number or the header,
    2 spaces apart) fit in ``room`` characters: one table each."""
    groups: list[list[str]] = [[]]
    used = 0
    for header in headers:
        width = max(len(header), 5) + 2
        if groups[-1] and used + width > room:
            groups.append([])
            used = 0
        groups[-1].append(header)
        used += width
    return groups


def _table(title: str, columns: dict[str, Cell], results: list[BackendResult]) -> Table:
    table = Table(
        title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1), pad_edge=False
    )
    table.add_column("backend", no_wrap=True)
    for header in columns:
        table.add_column(header, justify="right")
    for result in results:
        if result.available:
            table.add_row(result.name, *(cell(result) for cell in columns.values()))
        else:
            table.add_row(result.name, "n/a", *[MISSING] * (len(columns) - 1), style="dim")
    return table


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
        f"vector extensions: {', '.join(machine.get('vector_extensions') or ['unknown'])}",
        f"fp32 peak: {peak_text}",
    ]
    tiles = report.settings.get("tiles")
    if tiles:
        lines.append(
            f"tiles {tiles}: each query is a 1024 x 768 frame cut into {tiles} tiles, encoded "
            "together, against the k prompts' tiles; times and images/s count frames"
        )
    for name, flops in report.flops().items():
        heads = ", ".join(f"k={k} {v / 1e9:.3g}" for k, v in flops["head_per_query"].items())
        encoder = flops["encoder_per_image"]["total"] / 1e9
        lines.append(f"GFLOP ({name}): encoder {encoder:.3g} per image; head {heads} per query")
    priors = ", ".join(
        f"{r.name} {number(r.text_prior_ms['ours'])} / {number(r.text_prior_ms['authors'])}"
        for r in report.backends
        if r.text_prior_ms
    )
    if priors:
        lines.append(f"text prior, once (ms, ours / the authors' full context): {priors}")
    gpus = {(r.gpu["name"], r.gpu["compute_capability"]) for r in report.backends if r.gpu}
    for name, capability in sorted(gpus):
        lines.append(f"GPU rows ran on {name} (compute capability {capability})")
    for result in report.backends:
        if result.quantization:
            q = result.quantization
            because = f", chosen by {q['fp32_because']}" if q.get("fp32_because") else ""
            lines.append(
                f"{result.name}: {q.get('format')} int8, activations {q.get('activations')}, "
                f"weights {q.get('weights')}, {q.get('method')} calibration on "
                f"{q.get('images')} images; split: {q.get('split')}{because}"
            )
    if report.eval_data is not None:
        lines.append(f"accuracy data: {describe_data(report.eval_data)}")
    return lines + [f"note: {note}" for note in report.notes]


def print_report(report: BenchReport, console: Console | None = None) -> None:
    """The header lines, the tables, then why each unavailable backend is so."""
    console = console or Console()
    lines = [*header_lines(report), *(_table(*table) for table in _tables(report))]
    served = served_table(report.backends)
    lines += [served] if served is not None else []
    unavailable = [r for r in report.backends if not r.available]
    if unavailable:
        lines += ["Not available:", *(f"  {r.name}: {r.reason}" for r in unavailable)]
    for line in lines:
        console.print(line, markup=False, highlight=False)


def _latency_axis(axis, report: BenchReport) -> None:
    for result in report.backends:
        if result.available:
            batches = [t.batch for t in result.throughput]
            axis.plot(batches, [t.ms_per_image for t in result.throughput], "o-", label=result.name)
    batches = report.settings["batches"]
    axis.set_xscale("log", base=2)
    axis.set_xticks(batches, [str(b) for b in batches])
    axis.minorticks_off()
    axis.set(yscale="log", xlabel="batch size", ylabel="ms per query (median)")
    axis.set_title("latency per query", fontsize=10)
    if axis.get_legend_handles_labels()[0]:
        axis.legend(fontsize=7)


def _speedup_axis(axis, report: BenchReport) -> None:
    baseline = "authors" if any(r.speedup_vs_authors for r in report.backends) else "torch-fp32"
    attribute = SPEEDUP_BASELINES[baseline]
    rows = [(r.name, getattr(r, attribute)) for r in report.backends if getattr(r, attribute)]
    axis.set_title(f"speed-up over {baseline}", fontsize=10)
    if not rows:
        axis.text(0.5, 0.5, f"{baseline} not measured", ha="center", transform=axis.transAxes)
        return
    positions = np.arange(len(rows))
    for key, label, offset in (
        ("latency", "latency, batch 1", -0.2),
        ("throughput", "throughput, largest batch", 0.2),
    ):
        values = [speedup[key] for _, speedup in rows]
        bars = axis.barh(positions + offset, values, height=0.4, label=label)
        axis.bar_label(bars, labels=[times(v) for v in values], fontsize=7, padding=2)
    axis.set_yticks(positions, [name for name, _ in rows], fontsize=8)
    axis.invert_yaxis()
    axis.axvline(1.0, color="0.5", linewidth=1)
    axis.set(xscale="log", xlabel=f"speed-up over {baseline}")
    axis.legend(fontsize=7)


def _accuracy_axis(axis, report: BenchReport) -> None:
    rows = [r for r in report.backends if r.accuracy is not None]
    positions = np.arange(len(rows))
    bars = axis.barh(positions, [r.accuracy.mean_auroc for r in rows], height=0.6)
    labels = [f"{r.accuracy.mean_auroc:.3f}, drift {drift(r.accuracy.drift_max_abs)}" for r in rows]
    axis.bar_label(bars, labels=labels, fontsize=7, padding=2)
    axis.set_yticks(positions, [r.name for r in rows], fontsize=8)
    axis.invert_yaxis()
    axis.set(xlim=(0, 1.3), xlabel="image AUROC (mean over categories)")
    axis.set_title(f"accuracy on {report.eval_data['name']}, max drift vs torch-fp32", fontsize=10)


def write_plot(report: BenchReport, path: str | os.PathLike) -> None:
    """Write the PNG: latency per query vs batch per backend, speed-up bars and, with --eval,
    AUROC bars."""
    from matplotlib.figure import Figure

    panels = [_latency_axis, _speedup_axis]
    if any(r.accuracy is not None for r in report.backends):
        panels.append(_accuracy_axis)
    figure = Figure(figsize=(6 * len(panels), 4.8))
    for axis, draw in zip(figure.subplots(1, len(panels)), panels, strict=True):
        draw(axis, report)
    figure.suptitle(f"inctrl-bench: {report.model}, {report.machine['cpu']}", fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
