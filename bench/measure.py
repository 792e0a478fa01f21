"""Measure one backend: load, latency at batch 1, throughput per batch size, stages, prompt
registration per k, memory, and the arithmetic rate it reached.

Every measurement is one warm-up run and then timed runs (``Repeats``); queries and prompts are
seeded random camera-sized frames, preprocessed by each backend as part of its time.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from inctrl_bench.backends import Backend, Unavailable, problems
from inctrl_bench.flops import ModelShape
from inctrl_bench.machine import Peak
from inctrl_bench.progress import Progress
from inctrl_bench.runners import Images, Runner, open_runtime_runner
from inctrl_bench.sources import Sources
from inctrl_bench.timing import PeakRss, Repeats, StageClock, Timing, timed_runs
from inctrl_runtime.errors import InputError

# A VGA camera frame: resizing and cropping to the model's input is part of each query.
FRAME = (480, 640)
REGISTER = "reference"
MB = 2**20
# What peak_rss_mb covers, by whether the kernel's high-water mark could be reset (PeakRss).
RSS_SCOPE = {
    True: "whole process, peak during the backend's load and measurements",
    False: "whole process, lifetime peak up to the backend's end (the peak could not be reset)",
}


@dataclass(frozen=True)
class Plan:
    """What to measure: batch sizes, prompt counts (queries use the first), repeats."""

    batches: tuple[int, ...]
    shots: tuple[int, ...]
    repeats: Repeats
    category: str

    @property
    def query_shots(self) -> int:
        return self.shots[0]


@dataclass(frozen=True)
class Workload:
    """Seeded random query and prompt images, enough for the largest batch and k."""

    queries: list[np.ndarray]
    prompts: list[np.ndarray]

    @classmethod
    def make(cls, queries: int, prompts: int, seed: int = 0) -> Workload:
        rng = np.random.default_rng(seed)
        frames = [
            rng.integers(0, 256, (*FRAME, 3), dtype=np.uint8) for _ in range(queries + prompts)
        ]
        return cls(frames[:queries], frames[queries:])


@dataclass(frozen=True)
class Throughput:
    """Images per second at one batch size, from the median batch time."""

    batch: int
    images_per_s: float
    ms_per_image: float
    timing: Timing

    @classmethod
    def of(cls, batch: int, timing: Timing) -> Throughput:
        return cls(batch, batch * 1e3 / timing.p50_ms, timing.p50_ms / batch, timing)


@dataclass(frozen=True)
class Registration:
    """Encoding k prompt images into a reference bank."""

    shots: int
    timing: Timing


@dataclass
class BackendResult:
    """Everything measured for one backend; only ``reason`` when it is not available."""

    name: str
    kind: str
    precision: str
    device: str
    available: bool = False
    reason: str | None = None
    model: str | None = None
    load_s: float | None = None
    latency: Timing | None = None
    throughput: list[Throughput] = field(default_factory=list)
    registration: list[Registration] = field(default_factory=list)
    flops_per_query: int | None = None
    achieved_gflops: float | None = None
    peak_percent: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_scope: str | None = None
    gpu_peak_mb: float | None = None
    speedup_vs_authors: dict[str, float] | None = None
    speedup_vs_torch_fp32: dict[str, float] | None = None
    shape: ModelShape | None = None  # the model's numbers, reported once per model

    @property
    def largest_batch(self) -> Throughput:
        """Throughput at the largest batch measured (batch sizes are measured in order)."""
        return self.throughput[-1]

    def to_dict(self) -> dict:
        record = asdict(self)
        del record["shape"]
        return record


def _source(backend: Backend, device: str, sources: Sources) -> Path | None:
    """The checkpoint or bundle the backend runs, made now if need be; Unavailable if none."""
    found = problems(backend, device)
    if found:
        raise Unavailable("; ".join(found))
    if backend.uses_torch:
        return sources.checkpoint()
    return sources.bundle(backend.precision)


def _open(backend: Backend, device: str, source: Path | None) -> Runner:
    """Load the model or start the sessions; a file that will not load is reported as the
    reason the backend is not available, and the other backends still run."""
    try:
        if backend.uses_torch:
            from inctrl_bench.torch_side import open_torch_runner

            return open_torch_runner(backend, source, device)
        return open_runtime_runner(backend, str(source))
    except InputError as err:
        raise Unavailable(f"{source or 'the demo'} does not load: {err}") from None


def _time_queries(runner: Runner, images: Images, repeats: Repeats) -> Timing:
    return Timing.of(timed_runs(lambda clock: runner.run(images, clock), repeats, runner.sync))


def _time_registration(runner: Runner, prompts: Images, repeats: Repeats) -> Timing:
    def register(clock: StageClock) -> None:
        with clock(REGISTER):
            runner.reference(prompts)

    return Timing.of(timed_runs(register, repeats, runner.sync))


def measure(
    runner: Runner, workload: Workload, plan: Plan, progress: Progress, result: BackendResult
) -> None:
    """Fill ``result`` with the runner's latency, throughput and registration times."""
    name = runner.backend.name
    with runner.session():
        runner.prepare(workload.prompts[: plan.query_shots], plan.category)
        progress.step(f"{name}: latency at batch 1")
        result.latency = _time_queries(runner, workload.queries[:1], plan.repeats)
        # A runner limited below every batch asked for is measured at batch 1, its only size.
        batches = [
            b for b in plan.batches if runner.max_batch is None or b <= runner.max_batch
        ] or [1]
        for batch in batches:
            progress.step(f"{name}: throughput at batch {batch}")
            timing = result.latency
            if batch != 1:
                timing = _time_queries(runner, workload.queries[:batch], plan.repeats)
            result.throughput.append(Throughput.of(batch, timing))
        for shots in plan.shots if runner.registers else ():
            progress.step(f"{name}: registering {shots} prompt images")
            timing = _time_registration(runner, workload.prompts[:shots], plan.repeats)
            result.registration.append(Registration(shots, timing))


def _summarize(result: BackendResult, runner: Runner, peak: Peak, rss: PeakRss) -> None:
    """The model, arithmetic rate and memory of a measured backend."""
    result.available = True
    result.model = runner.shape.name
    result.shape = runner.shape
    result.flops_per_query = runner.flops_per_query()
    result.achieved_gflops = result.flops_per_query * result.largest_batch.images_per_s / 1e9
    if peak.gflops:
        result.peak_percent = 100 * result.achieved_gflops / peak.gflops
    if rss.peak_bytes is not None:
        result.peak_rss_mb = rss.peak_bytes / MB
        result.peak_rss_scope = RSS_SCOPE[rss.since_entry]
    gpu_bytes = runner.gpu_peak_bytes()
    result.gpu_peak_mb = gpu_bytes / MB if gpu_bytes is not None else None


def bench_backend(
    backend: Backend,
    device: str,
    sources: Sources,
    workload: Workload,
    plan: Plan,
    peak: Peak,
    progress: Progress,
) -> BackendResult:
    """Open and measure one backend; an unavailable one comes back with the reason."""
    result = BackendResult(backend.name, backend.kind, backend.precision, backend.device or device)
    try:
        source = _source(backend, device, sources)
        progress.step(f"{backend.name}: loading")
        began = time.perf_counter()
        with PeakRss() as rss:
            runner = _open(backend, device, source)
            result.load_s = time.perf_counter() - began
            measure(runner, workload, plan, progress, result)
    except Unavailable as err:
        result.reason = str(err)
        progress.done(f"{backend.name}: not available: {err}")
        return result
    _summarize(result, runner, peak, rss)
    del runner
    gc.collect()
    largest = result.largest_batch
    progress.done(
        f"{backend.name}: {result.latency.p50_ms:.1f} ms a query at batch 1, "
        f"{largest.images_per_s:.1f} images/s at batch {largest.batch} "
        f"({time.perf_counter() - began:.1f} s)"
    )
    return result
