"""How measurements are taken: repeat policies, staged wall-clock runs, percentiles, the peak
of process RSS, and the progress a long bench shows on stderr."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from inctrl_runtime.console import say

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
        clocks.append(StageClock(sync))
        run(clocks[-1])
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


def _high_water_mark() -> int | None:
    """The kernel's peak RSS of this process (VmHWM of /proc/self/status) in bytes."""
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
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
    """The peak RSS of the whole process while the block runs: the kernel's high-water mark,
    reset at entry; where it cannot be reset, the lifetime peak (getrusage), which may predate
    the block. ``since_entry`` says which it is."""

    peak_bytes: int | None = None
    since_entry = False

    def __enter__(self) -> PeakRss:
        with contextlib.suppress(OSError):
            with open("/proc/self/clear_refs", "w") as handle:
                handle.write("5")  # resets VmHWM to the current RSS
            self.since_entry = True
        return self

    def __exit__(self, *exc_info) -> None:
        self.peak_bytes = _high_water_mark() if self.since_entry else None
        if self.peak_bytes is None:
            self.since_entry = False
            self.peak_bytes = _lifetime_peak_rss()


@dataclass
class Progress:
    """Where a long bench is: ``step`` (what is measured now) updates ``spinner`` if there is
    one, ``done`` (something worth a line) goes to stderr if ``echo``. Silent by default."""

    spinner: Any = None
    echo: bool = False

    def step(self, message: str) -> None:
        if self.spinner is not None:
            self.spinner.update(message)

    def done(self, message: str) -> None:
        if self.echo:
            say(message)
