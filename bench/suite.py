"""One bench run: ``BenchSettings`` in, a ``BenchReport`` out, its JSON and plot written."""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from inctrl_bench import machine
from inctrl_bench.accuracy import REFERENCE, EvalData, load_eval_data
from inctrl_bench.artifacts import Artifacts
from inctrl_bench.backends import Unavailable, select_backends
from inctrl_bench.flops import flops_record
from inctrl_bench.machine import Peak, Progress
from inctrl_bench.measure import BackendResult, bench_backend, reference_scores
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import write_json
from inctrl_runtime.tiling import Tiling

SCHEMA = "inctrl.bench/1"
# The backends every other is compared with, and the result field that holds the speed-up.
SPEEDUP_BASELINES = {"authors": "speedup_vs_authors", "torch-fp32": "speedup_vs_torch_fp32"}


def parse_sizes(sizes: str | Sequence[int], option: str) -> tuple[int, ...]:
    """Batch sizes or prompt counts (``"32,1,8"`` or numbers) in increasing order, no repeats."""
    parts = sizes.split(",") if isinstance(sizes, str) else sizes
    try:
        ordered = tuple(sorted({int(part) for part in parts}))
    except ValueError:
        ordered = ()
    if not ordered or ordered[0] < 1:
        raise InputError(f"{option} {sizes!r}: give positive whole numbers, separated by commas")
    return ordered


@dataclass(frozen=True)
class BenchSettings:
    """What ``inctrl-bench`` measures; the defaults are its defaults."""

    bundle: Path | None = None
    checkpoint: Path | None = None
    preset: str | None = None
    backends: tuple[str, ...] = ()
    batches: tuple[int, ...] = (1, 8, 32)
    shots: tuple[int, ...] = (2, 4, 8)
    device: str = "cpu"
    repeats: int | None = None  # None: at least 2 runs and 1 s per measurement, at most 50
    seed: int = 0
    eval_data: Path | None = None  # labelled MVTec-layout data: each row's AUROC and drift
    tiles: str | None = None  # RxC: frames scored tile by tile (None: whole)
    keep_fp32: tuple[str, ...] = ()  # the bench's own int8 export: block products left fp32

    def __post_init__(self) -> None:
        # Sorted once here: the last batch is the largest, the first k the one queries use.
        object.__setattr__(self, "batches", parse_sizes(self.batches, "--batch"))
        object.__setattr__(self, "shots", parse_sizes(self.shots, "--shots"))
        if self.device not in ("cpu", "cuda"):
            raise InputError(f"unknown device {self.device!r}; use cpu or cuda")
        if self.repeats is not None and self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.tiles is not None and self.eval_data is not None:
            raise InputError(
                "--tiles times tiled frames; measure tiled accuracy with inctrl evaluate --tiles"
            )
        self.tiling  # noqa: B018 - a bad grid is refused here
        if self.keep_fp32 and self.bundle is not None:
            raise InputError(
                "--keep-fp32 splits the bench's own int8 export; a given BUNDLE keeps its own "
                "split (inctrl-run info shows it): drop one of them"
            )
        if self.keep_fp32 and machine.import_problem("inctrl_export.quantize") is None:
            from inctrl_export.quantize import fp32_choice

            for choice in self.keep_fp32:
                fp32_choice(choice)  # a choice that names no kind or block is refused here

    @property
    def tiling(self) -> Tiling | None:
        """The grid of --tiles (None: frames scored whole)."""
        return None if self.tiles is None else Tiling.parse(self.tiles)

    def command_line(self) -> str:
        """The inctrl-bench command that repeats this run."""
        words = ["inctrl-bench"] + ([str(self.bundle)] if self.bundle else [])
        batches, shots = (",".join(map(str, sizes)) for sizes in (self.batches, self.shots))
        options = {"--checkpoint": self.checkpoint, "--preset": self.preset}
        options |= {"--repeats": self.repeats, "--device": self.device}
        options |= {"--batch": batches, "--shots": shots, "--eval": self.eval_data}
        options |= {"--tiles": self.tiles}
        words += [w for o, v in options.items() if v is not None for w in (o, str(v))]
        words += [w for name in self.backends for w in ("--backend", name)]
        words += [w for choice in self.keep_fp32 for w in ("--keep-fp32", choice)]
        return shlex.join(words)

    def to_dict(self) -> dict:
        record = dataclasses.asdict(self)
        record.update({k: str(v) for k, v in record.items() if isinstance(v, Path)})
        fewest, most, seconds = machine.ADAPTIVE_REPEATS
        adaptive = f"{fewest}-{most} runs, at least {seconds:g} s"
        record["repeats"] = adaptive if self.repeats is None else f"{self.repeats} runs"
        return record


@dataclass
class BenchReport:
    """The outcome of a run: the machine, the settings, the peak, one result per backend."""

    machine: dict
    settings: dict
    model: str
    category: str
    peak: Peak
    backends: list[BackendResult]
    notes: list[str] = field(default_factory=list)
    eval_data: dict | None = None  # what --eval scored: the data's name, size, k

    def flops(self) -> dict[str, dict]:
        """The arithmetic of each model benched, by name (``flops_record``)."""
        shapes = {r.shape.name: r.shape for r in self.backends if r.shape is not None}
        return {name: flops_record(shape, self.settings["shots"]) for name, shape in shapes.items()}

    def to_dict(self) -> dict:
        record = {"schema": SCHEMA, **dataclasses.asdict(self), "flops": self.flops()}
        record["backends"] = {r.name: r.to_dict() for r in self.backends}
        return record


def add_speedups(results: list[BackendResult]) -> None:
    """Speed-ups over each baseline: latency at batch 1, throughput at each one's largest batch."""
    available = {r.name: r for r in results if r.available}
    for baseline, attribute in SPEEDUP_BASELINES.items():
        base = available.get(baseline)
        if base is None:
            continue
        for result in available.values():
            speedup = {
                "latency": base.latency.p50_ms / result.latency.p50_ms,
                "throughput": result.largest_batch.images_per_s / base.largest_batch.images_per_s,
            }
            setattr(result, attribute, speedup)


def add_drift(
    results: list[BackendResult],
    settings: BenchSettings,
    artifacts: Artifacts,
    data: EvalData,
    progress: Progress,
) -> None:
    """Each scored row's final-score drift against torch-fp32 on the same queries: its row's
    scores, else torch-fp32 run on the eval images alone; why not, where it cannot run."""
    scored = {r.name: r.accuracy for r in results if r.accuracy is not None}
    if not scored:
        return
    label = f"{REFERENCE} on {settings.device}"
    if REFERENCE in scored:
        reference = scored[REFERENCE].scores
    else:
        try:
            reference = reference_scores(settings, artifacts, data, progress)
        except Unavailable as err:
            artifacts.notes.append(f"score drift not measured: {REFERENCE} cannot run here: {err}")
            for accuracy in scored.values():
                accuracy.drift_reason = f"{REFERENCE} cannot run here: {err}"
            return
        artifacts.notes.append(
            f"score drift is against {label}, run on the --eval images only (not a benched row)"
        )
    for accuracy in scored.values():
        accuracy.add_drift(reference, label)


def _check_output(path: Path | None, option: str) -> None:
    """Refuse an output file that could not be written, before a long run."""
    if path is None:
        return
    folder = Path(path).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: cannot write in {folder}; choose another path")
    if Path(path).is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")


def run_bench(
    settings: BenchSettings,
    json_file: Path | None = None,
    plot_file: Path | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Measure every selected backend, then write the JSON report and the plot if asked."""
    progress = progress or Progress()
    backends = select_backends(settings.backends)
    _check_output(json_file, "--json")
    _check_output(plot_file, "--plot")
    problem = machine.import_problem("matplotlib") if plot_file is not None else None
    if problem is not None:
        raise InputError(f"--plot needs matplotlib ({problem}): install inctrl[torch] or drop it")
    data = None
    if settings.eval_data is not None:
        data = load_eval_data(settings.eval_data, settings.shots[0])
    machine_record = machine.machine_info(settings.command_line())
    with tempfile.TemporaryDirectory(prefix="inctrl-bench-") as workdir:
        given = settings.bundle, settings.checkpoint, settings.preset
        artifacts = Artifacts(
            Path(workdir), *given, settings.seed, progress, data, settings.keep_fp32
        )
        progress.step("measuring the fp32 matrix-product peak")
        # torch only if loaded anyway: its libraries would count in every onnxruntime row's RSS.
        with_torch = any(b.uses_torch for b in backends) or "torch" in sys.modules
        peak = machine.measure_peak(settings.device, with_torch)
        results = [bench_backend(b, settings, artifacts, peak, progress, data) for b in backends]
        if data is not None:  # after every row: torch loaded now adds to no row's memory
            add_drift(results, settings, artifacts, data, progress)
    add_speedups(results)
    model, category, notes = artifacts.model_label, artifacts.category, artifacts.notes
    report = BenchReport(machine_record, settings.to_dict(), model, category, peak, results, notes)
    report.eval_data = data.to_dict() if data is not None else None
    if json_file is not None:
        write_json(json_file, report.to_dict())
    if plot_file is not None:
        from inctrl_bench.report import write_plot

        write_plot(report, plot_file)
    return report
