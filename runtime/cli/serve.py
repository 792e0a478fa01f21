"""``inctrl-run serve``: a bundle on the real Triton Inference Server, until Ctrl-C or SIGTERM.

It writes the python-backend repository of the bundle into a temporary folder (the models read
the bundle where it is), starts ``tritonserver`` on it, prints the endpoints once it is ready,
watches its python stubs (``StubWatchdog``: a model whose stub died is loaded again, and said
so; one that cannot be is a one-line stop), and on Ctrl-C / SIGTERM stops the server and
removes the folder.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import typer

from inctrl_runtime.cli.common import BundleArgument, ThreadsOption, app
from inctrl_runtime.console import DriftDelta, RegionFpr, say, status
from inctrl_runtime.decisions import DEFAULT_FPR
from inctrl_runtime.drift import DEFAULT_DELTA
from inctrl_runtime.errors import InputError
from inctrl_runtime.triton.configs import DEFAULT_MAX_BATCH
from inctrl_runtime.triton.names import (
    CATEGORY,
    DRIFT_ALARM,
    DRIFT_EVIDENCE,
    ENTRY,
    FLAGGED_RATE,
    IMAGE,
)


def run_serve(
    bundle: Path,
    host: str = "127.0.0.1",
    http_port: int = 8000,
    grpc_port: int = 8001,
    metrics_port: int = 8002,
    instances: int = 1,
    max_batch: int = DEFAULT_MAX_BATCH,
    fpr: float = DEFAULT_FPR,
    threads: int | None = None,
    ready_timeout: float = 120.0,
    region_fpr: float | None = None,
    drift_delta: float = DEFAULT_DELTA,
) -> None:
    """Serve ``bundle`` until interrupted (a port of 0 is a free one), with decisions at rate
    ``fpr``, regions at ``region_fpr`` (None: ``fpr``) and every calibrated category's drift
    monitor alarming at ``drift_delta``; a server that dies is a one-line error quoting its
    log's end."""
    from inctrl_runtime.triton.repository import write_repository
    from inctrl_runtime.triton.server import TritonServer, serving_problem
    from inctrl_runtime.triton.watchdog import StubWatchdog

    problem = serving_problem()
    if problem:
        raise InputError(problem)
    with tempfile.TemporaryDirectory(prefix="inctrl-serve-") as folder:
        repository = Path(folder) / "repository"
        # checks the address first: a host or port it cannot listen on writes nothing
        server = TritonServer(repository, host, http_port, grpc_port, metrics_port, workdir=folder)
        write_repository(
            bundle, repository, max_batch=max_batch, instances=instances, fpr=fpr,
            region_fpr=region_fpr, threads=threads, drift_delta=drift_delta,
        )  # fmt: skip
        watchdog = None
        try:
            with status("starting tritonserver"):
                waited = server.start().wait_ready(ready_timeout)
            _print_endpoints(server, bundle, waited)
            watchdog = StubWatchdog(server, report=say).start()
            while server.process is not None and server.process.poll() is None:
                if watchdog.failed is not None:
                    server.stop_with(watchdog.failed)
                time.sleep(0.5)
            server.stop_with("exited on its own")
        finally:
            if watchdog is not None:
                watchdog.stop()
            server.stop()


def _print_endpoints(server, bundle: Path, waited: float) -> None:
    from inctrl_runtime.bundle import Bundle
    from inctrl_runtime.triton.repository import registered_categories

    checked = Bundle.open(bundle, check_files=False)
    served = ", ".join(registered_categories(checked, None, check_banks=False)) or "none yet"
    lines = [
        f"serving {bundle} on tritonserver (pid {server.process.pid}, ready in {waited:.1f} s)",
        f"  HTTP     {server.http_url}",
        f"  gRPC     {server.grpc_url}",
        f"  metrics  {server.metrics_url}",
        f"  repository {server.repository} (removed when it stops)",
        f"  model    {ENTRY} (inputs {IMAGE}: the image file's bytes, {CATEGORY}: its name)",
        f"  registered categories: {served} (of {', '.join(checked.categories)})",
        f"add one while it runs: inctrl-run register {bundle} --category C --shot IMG ...",
        f"score: inctrl-run client {server.http_url} --category C IMG ...",
        f"drift: each calibrated category's gauges {DRIFT_EVIDENCE}, {DRIFT_ALARM}, "
        f"{FLAGGED_RATE} at {server.metrics_url}; inctrl-run monitor {bundle} "
        "--category C",
        "Ctrl-C stops it",
    ]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()


@app.command()
def serve(
    bundle: Path = BundleArgument,
    http_port: int = typer.Option(8000, "--http-port", help="HTTP port (0: a free one)."),
    grpc_port: int = typer.Option(8001, "--grpc-port", help="gRPC port (0: a free one)."),
    metrics_port: int = typer.Option(8002, "--metrics-port", help="Metrics port (0: free)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: all)."),
    instances: int = typer.Option(1, "--instances", help="Encoder instances."),
    max_batch: int = typer.Option(DEFAULT_MAX_BATCH, "--max-batch", help="Largest batch."),
    fpr: float = typer.Option(DEFAULT_FPR, "--fpr", help="False-positive rate of decisions."),
    region_fpr: RegionFpr = None,
    drift_delta: DriftDelta = DEFAULT_DELTA,
    threads: int | None = ThreadsOption,
) -> None:
    """Serve a bundle on NVIDIA Triton Inference Server until Ctrl-C.

    Runs the serve extra's tritonserver (python backend, CPU) on every registered category,
    and on those registered while it runs. Every calibrated category's parts feed its drift
    monitor (in the bundle's monitors/), published on the metrics endpoint.

    Example: inctrl-run serve bundle/ --http-port 8000
    """
    run_serve(
        bundle,
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        instances=instances,
        max_batch=max_batch,
        fpr=fpr,
        threads=threads,
        region_fpr=region_fpr,
        drift_delta=drift_delta,
    )
