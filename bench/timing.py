"""Wall-clock timing of staged runs, repeat policies, percentiles, and the peak of process RSS."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class Repeats:
    """How many timed runs a measurement takes after its one warm-up run: at least
    ``min_runs``, more while under ``min_seconds`` in all, never more than ``max_runs``."""

    min_runs: int = 2
    max_runs: int = 50
    min_seconds: float = 1.0

    @classmethod
    def exactly(cls, runs: int) -> Repeats:
        return cls(min_runs=runs, max_runs=runs, min_seconds=0.0)

    def describe(self) -> str:
        if self.min_runs == self.max_runs:
            return f"{self.min_runs} runs"
        return f"{self.min_runs}-{self.max_runs} runs, at least {self.min_seconds:g} s"


class StageClock:
    """Times the named stages of one run. ``sync`` is called before each stage's clock stops,
    so that work queued on a GPU is counted in the stage that queued it."""

    def __init__(self, sync: Callable[[], None] = lambda: None) -> None:
        self.sync = sync
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        began = time.perf_counter()
        yield
        self.sync()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - began

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def timed_runs(
    run: Callable[[StageClock], None], repeats: Repeats, sync: Callable[[], None] = lambda: None
) -> list[StageClock]:
    """One warm-up run, then timed runs as ``repeats`` says; each run's stage times."""
    run(StageClock(sync))
    clocks: list[StageClock] = []
    began = time.perf_counter()
    while len(clocks) < repeats.min_runs or (
        len(clocks) < repeats.max_runs and time.perf_counter() - began < repeats.min_seconds
    ):
        clock = StageClock(sync)
        run(clock)
        clocks.append(clock)
    return clocks


@dataclass(frozen=True)
class Timing:
    """Per-run wall time of one measurement, in milliseconds, with the median of each stage."""

    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    stages_ms: dict[str, float] = field(default_factory=dict)

    @classmethod
    def of(cls, clocks: list[StageClock]) -> Timing:
        totals = np.array([c.total for c in clocks]) * 1e3
        p50, p90, p99 = (float(np.percentile(totals, q)) for q in PERCENTILES)
        stages = {
            stage: float(np.median([c.seconds.get(stage, 0.0) for c in clocks]) * 1e3)
            for stage in clocks[0].seconds
        }
        return cls(len(clocks), p50, p90, p99, stages)


def _reset_high_water_mark() -> bool:
    """Reset the kernel's peak RSS of this process (VmHWM) to its current RSS; False where
    /proc/self/clear_refs is missing or cannot be written."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


def _high_water_mark() -> int | None:
    """The kernel's peak RSS of this process (VmHWM of /proc/self/status) in bytes."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _lifetime_peak_rss() -> int | None:
    """The process's peak RSS since it started (getrusage), where /proc is missing."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


class PeakRss:
    """The peak RSS of the whole process while the block runs, as the kernel counts it: its
    high-water mark (VmHWM), reset at entry. Where it cannot be reset, the process's lifetime
    peak (getrusage), which may predate the block; ``since_entry`` says which it is."""

    def __init__(self) -> None:
        self.peak_bytes: int | None = None
        self.since_entry = False

    def __enter__(self) -> PeakRss:
        self.since_entry = _reset_high_water_mark()
        return self

    def __exit__(self, *exc_info) -> None:
        self.peak_bytes = _high_water_mark() if self.since_entry else None
        if self.peak_bytes is None:
            self.since_entry = False
            self.peak_bytes = _lifetime_peak_rss()
