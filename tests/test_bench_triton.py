"""inctrl-bench's ``triton`` row: benched only when named, the batch sizes a run executed from
two statistics snapshots, and a real run (the tiny bundle served by the REAL tritonserver
beside the in-process onnxruntime row): client-observed figures at concurrency 1, 4 and 16,
every request through the encoder once, the report's table, and the given bundle untouched."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from inctrl_bench.backends import CATALOGUE, select_backends
from inctrl_bench.report import print_report
from inctrl_bench.suite import BenchSettings, run_bench
from inctrl_bench.triton_backend import CONCURRENCIES, batch_sizes_text, executed_since
from inctrl_runtime.triton.client import ModelStatistics
from inctrl_runtime.triton.names import ENCODER, ENTRY

from helpers import require_serving, snapshot


@pytest.mark.unit
def test_triton_is_benched_only_when_named() -> None:
    assert "triton" not in [b.name for b in select_backends([])]
    assert [b.name for b in select_backends([])] == [b.name for b in CATALOGUE]
    (served,) = select_backends(["triton"])
    assert (served.name, served.kind, served.precision, served.device) == (
        "triton",
        "triton",
        "fp32",
        "cpu",
    )
    chosen = select_backends(["triton,onnxruntime-cpu-fp32"])
    assert [b.name for b in chosen] == ["onnxruntime-cpu-fp32", "triton"]


@pytest.mark.unit
def test_the_batches_of_a_run_are_the_difference_of_two_snapshots() -> None:
    before = {ENCODER: ModelStatistics(ENCODER, 5, 4, {1: 3, 2: 1})}
    after = {
        ENCODER: ModelStatistics(ENCODER, 17, 8, {1: 4, 2: 1, 4: 2, 3: 1}),
        ENTRY: ModelStatistics(ENTRY, 2, 1, {2: 1}),  # loaded since the first snapshot
    }
    executed = executed_since(before, after)
    assert executed == {ENCODER: {1: 1, 3: 1, 4: 2}, ENTRY: {2: 1}}
    assert batch_sizes_text(executed[ENCODER]) == "1x1 3x1 4x2"
    assert batch_sizes_text({}) == "-"


@pytest.mark.parity
@pytest.mark.slow
def test_the_triton_row_beside_the_runtime(tiny_bundle: Path, tmp_path: Path) -> None:
    require_serving()
    before = snapshot(tiny_bundle)
    settings = BenchSettings(
        bundle=tiny_bundle,
        backends=("triton", "onnxruntime-cpu-fp32"),
        batches=(1, 2),
        shots=(1,),
        repeats=2,
    )
    report = run_bench(settings, tmp_path / "bench.json")
    record = json.loads((tmp_path / "bench.json").read_text())["backends"]
    assert list(record) == ["onnxruntime-cpu-fp32", "triton"]
    served = record["triton"]
    assert served["available"], served["reason"]
    assert record["onnxruntime-cpu-fp32"]["served"] == []
    assert [run["concurrency"] for run in served["served"]] == list(CONCURRENCIES)
    for run in served["served"]:
        assert run["requests"] == 2 * run["concurrency"]
        assert run["latency"]["runs"] == run["requests"]
        assert 0 < run["latency"]["p50_ms"] <= run["latency"]["p99_ms"]
        assert run["images_per_s"] > 0
        encoder = {int(size): times for size, times in run["executed"][ENCODER].items()}
        assert sum(size * times for size, times in encoder.items()) == run["requests"]
    assert served["latency"] == served["served"][0]["latency"]  # one request at a time
    assert served["throughput"][0]["batch"] == 1 and served["load_s"] > 0
    assert snapshot(tiny_bundle) == before  # served from a copy: nothing written to it

    console = Console(file=io.StringIO(), width=80)
    print_report(report, console)
    printed = console.file.getvalue()
    assert "Served (one frame a request" in printed
    rows = [line.split()[:2] for line in printed.splitlines()]
    assert all(["triton", str(concurrency)] in rows for concurrency in CONCURRENCIES), printed


def test_the_triton_row_serves_tiled_frames(tiny_bundle: Path, tmp_path: Path) -> None:
    """--tiles 2x2+whole --backend triton: the category is registered tiled and served, each request
    a 1024 x 768 frame whose 4 tiles and whole view the entry model sends to the encoder."""
    require_serving()
    settings = BenchSettings(
        bundle=tiny_bundle, backends=("triton",), batches=(1,), shots=(1,), repeats=1,
        tiles="2x2+whole",
    )  # fmt: skip
    run_bench(settings, tmp_path / "bench.json")
    served = json.loads((tmp_path / "bench.json").read_text())["backends"]["triton"]
    assert served["available"], served["reason"]
    for run in served["served"]:
        encoder = {int(size): times for size, times in run["executed"][ENCODER].items()}
        assert sum(size * times for size, times in encoder.items()) == 5 * run["requests"]
