"""The ``triton`` row of inctrl-bench: the bench's bundle served as ``inctrl-run serve`` serves it
(the python-backend repository on the real ``tritonserver``), measured from a client.

Each request is one camera frame, as the in-process rows' batch 1 (with ``--tiles``, a 1024 x
768 frame of a category registered tiled: the entry model cuts it and sends its tiles to the
encoder as one batch). At each concurrency c (1, 4 and 16), c client threads keep c requests in
flight; the row reports the client-observed latency per request (p50/p90/p99), the images per
second over the run's wall time, and the batch sizes each model executed during the run
(Triton's statistics API, the counts of the run alone): the dynamic batcher's merging of
concurrent requests, seen from the server.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich import box
from rich.table import Table

from inctrl_bench.artifacts import Artifacts
from inctrl_bench.backends import FRAME, TILED_FRAME, Backend, Unavailable, random_frames
from inctrl_bench.machine import Progress, Timing
from inctrl_bench.measure import BackendResult, Throughput
from inctrl_runtime.errors import InputError
from inctrl_runtime.tiling import Tiling
from inctrl_runtime.triton.names import ENCODER

if TYPE_CHECKING:
    from inctrl_bench.suite import BenchSettings
    from inctrl_runtime.triton.client import Answer, ModelStatistics, Request, TritonClient

CONCURRENCIES = (1, 4, 16)
ROUNDS = 16  # requests per client thread at each concurrency, unless --repeats says
FRAMES = 16  # distinct frames the requests cycle through
READY_TIMEOUT_S = 300.0  # the python models load the bundle's graphs and check every sha256


@dataclass(frozen=True)
class ServedRun:
    """Requests sent ``concurrency`` at a time: the client-observed latency of each one
    (``latency``: their p50/p90/p99), the images per second over the run's wall time, and per
    model the batch sizes it executed during the run (size -> executions)."""

    concurrency: int
    requests: int
    latency: Timing
    images_per_s: float
    executed: dict[str, dict[int, int]]


def executed_since(
    before: dict[str, ModelStatistics], after: dict[str, ModelStatistics]
) -> dict[str, dict[int, int]]:
    """Per model, the batches of each size it executed between two ``statistics()`` calls."""
    executed = {}
    for name, now in after.items():
        earlier = before[name].batch_sizes if name in before else {}
        sizes = {size: count - earlier.get(size, 0) for size, count in now.batch_sizes.items()}
        executed[name] = {size: count for size, count in sizes.items() if count > 0}
    return executed


def served_run(
    client: TritonClient, requests: Sequence[Request], concurrency: int
) -> tuple[ServedRun, list[Answer]]:
    """Send ``requests`` ``concurrency`` at a time (``TritonClient.answers``); the figures of
    the run, and the answers in the requests' order."""
    before = client.statistics()
    began = time.perf_counter()
    answers = client.answers(requests, concurrency)
    wall_s = time.perf_counter() - began
    executed = executed_since(before, client.statistics())
    latencies = [answer.latency_s * 1e3 for answer in answers]
    p50, p90, p99 = (float(np.percentile(latencies, q)) for q in (50, 90, 99))
    timing = Timing(len(latencies), p50, p90, p99)
    return ServedRun(concurrency, len(requests), timing, len(requests) / wall_s, executed), answers


def served_copy(
    bundle: Path,
    folder: Path,
    category: str,
    prompts: Sequence[np.ndarray],
    tiling: Tiling | None = None,
) -> Path:
    """A copy of ``bundle`` (hard links where possible; a given bundle is never written to)
    with ``category`` registered on ``prompts`` (``tiling``: tiled), as the other rows hold it."""
    from inctrl_runtime.bundle import REFERENCES_DIR
    from inctrl_runtime.detector import Detector
    from inctrl_runtime.triton.repository import link_or_copy

    copy = folder / "bundle"
    skip = [REFERENCES_DIR]
    shutil.copytree(bundle, copy, copy_function=link_or_copy, ignore=lambda *_: skip)
    detector = Detector.open(copy)
    try:
        detector.register(category, list(prompts), tiling=tiling)
    finally:
        detector.close()
    return copy


def bench_triton(
    backend: Backend, settings: BenchSettings, artifacts: Artifacts, progress: Progress
) -> BackendResult:
    """The triton row: the bench's fp32 bundle served on this machine's CPU and measured at
    each of ``CONCURRENCIES``; an unavailable row comes back with the reason."""
    result = BackendResult(backend.name, backend.kind, backend.precision, backend.device or "cpu")
    try:
        _measure(result, settings, artifacts, progress)
    except Unavailable as err:
        result.reason = str(err)
        progress.done(f"{backend.name}: not available: {err}")
        return result
    best = max(result.served, key=lambda run: run.images_per_s)
    progress.done(
        f"{backend.name}: {result.latency.p50_ms:.1f} ms a request one at a time, "
        f"{best.images_per_s:.1f} images/s at concurrency {best.concurrency}"
    )
    return result


def _measure(
    result: BackendResult, settings: BenchSettings, artifacts: Artifacts, progress: Progress
) -> None:
    from inctrl_runtime.triton.server import serving_problem

    problem = serving_problem()
    if problem is not None:
        raise Unavailable(problem)
    if settings.device != "cpu":
        raise Unavailable("the serve extra's tritonserver runs the python backend on the CPU")
    from inctrl_runtime.triton.client import Request, TritonClient
    from inctrl_runtime.triton.repository import write_repository
    from inctrl_runtime.triton.server import TritonServer

    bundle, category = artifacts.bundle(result.precision), artifacts.category
    rng = np.random.default_rng(settings.seed)
    size = FRAME if settings.tiling is None else TILED_FRAME
    frames = random_frames(rng, FRAMES, size)
    prompts = random_frames(rng, settings.shots[0], size)
    rounds = settings.repeats or ROUNDS
    with tempfile.TemporaryDirectory(prefix="triton-", dir=artifacts.workdir) as folder:
        progress.step(f"{result.name}: writing and starting the server")
        began = time.perf_counter()
        try:
            served = served_copy(bundle, Path(folder), category, prompts, settings.tiling)
            repository = write_repository(served, Path(folder) / "repository")
            server = TritonServer(repository, workdir=folder).start()
            try:
                server.wait_ready(READY_TIMEOUT_S)
                result.load_s = time.perf_counter() - began
                client = TritonClient(server.http_url)
                requests = [Request.of(category, frame) for frame in frames]
                for concurrency in CONCURRENCIES:
                    progress.step(f"{result.name}: concurrency {concurrency}")
                    client.answers(requests[:concurrency], concurrency)  # warm-up
                    count = concurrency * rounds
                    cycled = [requests[i % len(requests)] for i in range(count)]
                    result.served.append(served_run(client, cycled, concurrency)[0])
            finally:
                server.stop()
        except InputError as err:
            raise Unavailable(f"{bundle} could not be served: {err}") from None
    one_at_a_time = result.served[0]
    result.available, result.engine = True, "tritonserver python backend, onnxruntime-cpu"
    result.latency = one_at_a_time.latency
    result.throughput = [Throughput.of(1, one_at_a_time.latency)]  # as the other rows' b=1
    if artifacts.data is not None:
        artifacts.notes.append(f"{result.name}: not scored on the --eval data (speed only)")


def batch_sizes_text(executed: dict[int, int]) -> str:
    """``1x12 2x3 4x5``: each batch size executed, times how often."""
    return " ".join(f"{size}x{count}" for size, count in sorted(executed.items())) or "-"


def served_table(results: Sequence[BackendResult]) -> Table | None:
    """The served rows by concurrency: requests, client-observed p50/p99 (ms), images/s and
    the batch sizes the encoder executed; None when no row was served."""
    served = [r for r in results if r.available and r.served]
    if not served:
        return None
    table = Table(
        title="Served (one frame a request, c in flight; client-observed ms; the encoder's "
        "executed batches, size x times)",
        box=box.SIMPLE_HEAD,
        title_justify="left",
        padding=(0, 1),
        pad_edge=False,
    )
    table.add_column("backend", no_wrap=True)
    for header in ("c", "requests", "p50", "p99", "images/s"):
        table.add_column(header, justify="right")
    table.add_column("encoder batches", overflow="fold")
    for result in served:
        for run in result.served:
            figures = (run.latency.p50_ms, run.latency.p99_ms, run.images_per_s)
            table.add_row(
                result.name,
                str(run.concurrency),
                str(run.requests),
                *(f"{value:.1f}" for value in figures),
                batch_sizes_text(run.executed.get(ENCODER, {})),
            )
    return table
