"""inctrl-bench's backend rows: selection by name and prefix, why the TensorRT rows cannot run
here (the real checks), the JSON report of a run of every backend on the tiny model, the native
plans' runs on a GPU, the printed report's TensorRT and int8 rows, and encoders timed in turn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inctrl_bench.backends import CATALOGUE, Unavailable, check_runnable, select_backends
from inctrl_bench.flops import query_flops
from inctrl_bench.suite import BenchSettings, run_bench
from inctrl_runtime.engines.tensorrt.cuda import gpu_problem
from inctrl_runtime.errors import InputError

NAMES = [backend.name for backend in CATALOGUE]
TIMING_KEYS = {"runs", "p50_ms", "p90_ms", "p99_ms", "stages_ms", "gpu_p50_ms"}
NATIVE = ["tensorrt-fp32", "tensorrt-fp16", "tensorrt-int8"]
PROVIDER = ["onnxruntime-tensorrt-fp32", "onnxruntime-tensorrt-fp16"]
# Measured only for TensorRT plans (or only on a GPU): null in every other row.
ENGINE_KEYS = ("engine_build", "build_s", "plan_mb")
NO_GPU = gpu_problem(0)


@pytest.mark.unit
def test_backend_selection_by_name_and_prefix() -> None:
    assert [b.name for b in select_backends([])] == NAMES
    assert [b.name for b in select_backends(["onnxruntime"])] == [
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
        "onnxruntime-cuda-fp32",
        "onnxruntime-cuda-fp16",
        *PROVIDER,
    ]
    # "tensorrt" means the native plans; onnxruntime's TensorRT provider is its own pair.
    native, provider = select_backends(["tensorrt"]), select_backends(["onnxruntime-tensorrt"])
    assert [b.name for b in native] == NATIVE and [b.name for b in provider] == PROVIDER
    assert {(b.kind, b.runtime_device, b.device) for b in native} == {
        ("tensorrt", "tensorrt", "cuda")
    }
    assert {(b.kind, b.runtime_device, b.device) for b in provider} == {
        ("onnxruntime", "ort-tensorrt", "cuda")
    }
    assert [b.precision for b in native + provider] == ["fp32", "fp16", "int8", "fp32", "fp16"]
    selected = select_backends(["torch-fp32", "authors", "onnxruntime-cpu"])
    assert [b.name for b in selected] == [
        "authors",
        "torch-fp32",
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
    ]
    with pytest.raises(InputError, match="unknown backend 'cudnn'"):
        select_backends(["cudnn"])


@pytest.mark.unit
@pytest.mark.skipif(NO_GPU is None, reason="this machine has a CUDA GPU")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_native_rows_name_the_missing_gpu(device: str) -> None:
    for backend in select_backends(["tensorrt"]):
        with pytest.raises(Unavailable) as refused:
            check_runnable(backend, device)
        assert NO_GPU in str(refused.value)


def _check_timing(record: dict) -> None:
    assert set(record) == TIMING_KEYS
    assert record["runs"] >= 1
    assert 0 < record["p50_ms"] <= record["p90_ms"] <= record["p99_ms"]


@pytest.mark.cli
def test_every_backend_on_the_tiny_model(tiny_checkpoint: Path, tmp_path) -> None:
    settings = BenchSettings(checkpoint=tiny_checkpoint, batches=(1, 2), shots=(1, 2), repeats=1)
    report = run_bench(settings, tmp_path / "bench.json", tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes().startswith(b"\x89PNG")
    record = json.loads((tmp_path / "bench.json").read_text())

    assert set(record["machine"]) >= {"cpu", "cores", "gpu", "os", "versions", "date", "command"}
    assert isinstance(record["machine"]["vector_extensions"], list)
    assert set(record["machine"]["versions"]) == {"python", "torch", "onnxruntime", "onnx", "numpy"}
    assert record["machine"]["command"].startswith("inctrl-bench --checkpoint")
    assert record["settings"]["batches"] == [1, 2] and record["settings"]["device"] == "cpu"
    assert record["peak"]["gflops"] > 0
    assert record["flops"]["tiny"]["encoder_per_image"]["total"] == 163_292_160
    assert list(record["backends"]) == NAMES
    for name, backend in record["backends"].items():
        assert isinstance(backend["available"], bool)
        assert (backend["reason"] is None) == backend["available"], name
        assert {key: backend[key] for key in (*ENGINE_KEYS, "gpu")} == dict.fromkeys(
            (*ENGINE_KEYS, "gpu")
        ), name  # no TensorRT plans ran, no GPU row ran
        if not backend["available"]:
            assert backend["reason"] and backend["speedup_vs_authors"] is None
            assert backend["engine"] is None and backend["latency"] is None
            continue
        _check_timing(backend["latency"])
        assert backend["latency"]["gpu_p50_ms"] is None  # no CUDA events on the CPU
        expected = "onnxruntime-cpu" if backend["kind"] == "onnxruntime" else None
        assert backend["engine"] == expected, name
        assert set(backend["latency"]["stages_ms"]) >= {"preprocess", "encoder", "head"}
        batches = [t["batch"] for t in backend["throughput"]]
        assert batches == ([1] if name == "authors" else [1, 2])
        assert all(t["images_per_s"] > 0 for t in backend["throughput"])
        assert backend["flops_per_query"] > 0 and backend["achieved_gflops"] > 0
        assert set(backend["speedup_vs_authors"]) == {"latency", "throughput"}
        assert backend["peak_rss_mb"] > 0 and "whole process" in backend["peak_rss_scope"]
        if backend["kind"] in ("authors", "torch"):  # the one-time text prior, both ways
            assert set(backend["text_prior_ms"]) == {"ours", "authors"}
            assert min(backend["text_prior_ms"].values()) > 0
        else:
            assert backend["text_prior_ms"] is None
        for registration in backend["registration"]:
            _check_timing(registration["timing"])
    available = {n for n, b in record["backends"].items() if b["available"]}
    assert {"authors", "torch-fp32", "torch-bf16", "onnxruntime-cpu-fp32"} <= available
    assert record["backends"]["authors"]["speedup_vs_authors"]["latency"] == pytest.approx(1.0)
    assert record["backends"]["authors"]["registration"] == []
    assert len(record["backends"]["torch-fp32"]["registration"]) == 2
    assert "torch-fp16" not in available  # CUDA only
    # No --eval: int8 of a real checkpoint is calibrated on random frames, and the notes say so.
    assert record["backends"]["onnxruntime-cpu-int8"]["quantization"]["images"] == 16
    assert any("random-frame calibration makes its" in note for note in record["notes"])
    assert all(backend["accuracy"] is None for backend in record["backends"].values())
    if NO_GPU is not None:
        for name in NATIVE:
            assert NO_GPU in record["backends"][name]["reason"], name
    assert [r.name for r in report.backends] == NAMES


def _builder_problem() -> str | None:
    from inctrl_export.tensorrt import builder_problem

    return builder_problem()


@pytest.mark.cli
@pytest.mark.gpu
@pytest.mark.skipif(_builder_problem() is not None, reason=f"{_builder_problem()}")
def test_native_rows_build_and_time_their_plans_on_a_gpu(tiny_checkpoint: Path, tmp_path) -> None:
    from inctrl_runtime.engines.tensorrt.cuda import compute_capability, gpu_name

    settings = BenchSettings(
        checkpoint=tiny_checkpoint,
        backends=("tensorrt", "onnxruntime-cuda-fp32"),
        batches=(1, 2),
        shots=(1, 2),
        device="cuda",
        repeats=2,
    )
    report = run_bench(settings, tmp_path / "bench.json")
    backends = json.loads((tmp_path / "bench.json").read_text())["backends"]
    gpu = {"name": gpu_name(0), "compute_capability": str(compute_capability(0))}
    for name in NATIVE:
        backend = backends[name]
        assert backend["available"], backend["reason"]
        assert backend["engine_build"].startswith(backend["precision"] + ".trt")
        assert backend["build_s"] > 0 and backend["plan_mb"] > 0
        assert backend["engine"] in ("tensorrt", "tensorrt-lean") and backend["gpu"] == gpu
        for timing in [backend["latency"], *(t["timing"] for t in backend["throughput"])]:
            assert 0 < timing["gpu_p50_ms"] <= timing["p90_ms"], name
    assert backends["onnxruntime-cuda-fp32"]["gpu"] == gpu
    assert backends["onnxruntime-cuda-fp32"]["latency"]["gpu_p50_ms"] is None
    assert [t.batch for t in report.backends[1].throughput] == [1, 2]


@pytest.mark.cli
@pytest.mark.gpu
@pytest.mark.skipif(_builder_problem() is not None, reason=f"{_builder_problem()}")
def test_a_given_bundle_without_plans_is_left_as_it_is(
    bundle: Path, tiny_checkpoint: Path, tmp_path
) -> None:
    before = {path: path.read_bytes() for path in bundle.rglob("*") if path.is_file()}
    settings = BenchSettings(
        bundle, tiny_checkpoint, backends=("tensorrt-fp32",), device="cuda", repeats=1
    )
    report = run_bench(settings)
    assert report.backends[0].available, report.backends[0].reason
    assert any("the bench built them in a temporary copy" in note for note in report.notes)
    assert {path: path.read_bytes() for path in bundle.rglob("*") if path.is_file()} == before


@pytest.mark.cli
def test_sizes_in_any_order_and_a_batch_too_large_for_authors(tiny_checkpoint: Path) -> None:
    settings = BenchSettings(
        checkpoint=tiny_checkpoint,
        backends=("authors", "torch-fp32"),
        batches=(2,),
        shots=(2, 1, 2),
        repeats=1,
    )
    assert settings.shots == (1, 2)
    authors, torch_fp32 = run_bench(settings).backends
    assert [t.batch for t in authors.throughput] == [1]  # its only batch size, though not asked
    assert authors.achieved_gflops > 0
    assert [t.batch for t in torch_fp32.throughput] == [2]
    assert [r.shots for r in torch_fp32.registration] == [1, 2]
    assert torch_fp32.flops_per_query == query_flops(torch_fp32.shape, 1)  # queries: smallest k
    assert torch_fp32.speedup_vs_authors["throughput"] > 0


@pytest.mark.unit
def test_tiled_rows_time_frames_cut_into_tiles(tiny_checkpoint: Path) -> None:
    """--tiles: each query a 1024 x 768 frame cut into 2x2 tiles and the whole view (T = 5), a
    bank per view group; the authors' way (one image at a time) and --eval are refused."""
    settings = BenchSettings(checkpoint=tiny_checkpoint, batches=(1, 2), shots=(1,), repeats=1,
                             backends=("authors", "torch-fp32", "onnxruntime-cpu-fp32"),
                             tiles="2x2+whole")  # fmt: skip
    report = run_bench(settings)
    authors, torch_fp32, runtime = report.backends
    assert not authors.available and "no --tiles" in authors.reason
    for row in (torch_fp32, runtime):
        assert row.available and [t.batch for t in row.throughput] == [1, 2]
        # 4 tiles against the prompt's 4, the whole view against its whole view
        assert row.flops_per_query == 4 * query_flops(row.shape, 4) + query_flops(row.shape, 1)
    assert report.settings["tiles"] == "2x2+whole"
    with pytest.raises(InputError, match="inctrl evaluate --tiles"):
        BenchSettings(tiles="2x2", eval_data=Path("data"))
    with pytest.raises(InputError, match="ROWSxCOLUMNS"):
        BenchSettings(tiles="2")


def _report_with(results: list) -> str:
    """The printed report of ``results`` on a GPU machine, as an 80-column terminal shows it."""
    import io

    from rich.console import Console

    from inctrl_bench.machine import Peak
    from inctrl_bench.report import print_report
    from inctrl_bench.suite import BenchReport

    machine = {"cpu": "a CPU", "cores": 16, "gpu": ["NVIDIA L4"], "vector_extensions": ["avx2"]}
    settings = {"batches": [1], "shots": [2], "device": "cuda"}
    report = BenchReport(machine, settings, "tiny", "candle", Peak(None, "not measured"), results)
    console = Console(file=io.StringIO(), width=80)
    print_report(report, console)
    return console.file.getvalue()


@pytest.mark.unit
def test_a_tensorrt_row_reports_its_build_size_and_gpu_time() -> None:
    from inctrl_bench.machine import Timing
    from inctrl_bench.measure import BackendResult, Throughput

    timing = Timing(5, 2.5, 3.0, 3.5, {"preprocess": 0.5, "encoder": 1.5, "head": 0.5}, 1.25)
    native = BackendResult("tensorrt-fp16", "tensorrt", "fp16", "cuda", available=True)
    native.latency, native.throughput = timing, [Throughput.of(1, timing)]
    native.engine, native.engine_build = "tensorrt-lean", "fp16.trt11.4.sm89.vc"
    native.build_s, native.plan_mb = 61.25, 12.5
    native.gpu = {"name": "NVIDIA L4", "compute_capability": "8.9"}
    provider = BackendResult("onnxruntime-tensorrt-fp16", "onnxruntime", "fp16", "cuda")
    provider.reason = "no TensorrtExecutionProvider"

    record = native.to_dict()
    assert record["latency"]["gpu_p50_ms"] == 1.25 and record["plan_mb"] == 12.5
    assert record["engine_build"] == "fp16.trt11.4.sm89.vc" and record["build_s"] == 61.25
    assert record["gpu"] == {"name": "NVIDIA L4", "compute_capability": "8.9"}
    assert {key: provider.to_dict()[key] for key in (*ENGINE_KEYS, "gpu", "engine")} == (
        dict.fromkeys((*ENGINE_KEYS, "gpu", "engine"))
    )

    printed = _report_with([native, provider])
    assert "GPU rows ran on NVIDIA L4 (compute capability 8.9)" in printed
    assert "vector extensions: avx2\n" in printed
    assert "TensorRT engines: build time and size of both plans" in printed
    lines = printed.splitlines()
    assert max(len(line) for line in lines) <= 80
    engines = lines[next(i for i, line in enumerate(lines) if "TensorRT engines" in line) :]
    row = next(line for line in engines if line.lstrip().startswith("tensorrt-fp16")).split()
    assert row == ["tensorrt-fp16", "fp16.trt11.4.sm89.vc", "61.2", "12.5", "1.25", "2.50"]
    assert not any(line.lstrip().startswith("onnxruntime-tensorrt") for line in engines[:8])
    assert "TensorRT engines" not in _report_with([provider])  # no table without plans


@pytest.mark.unit
def test_an_int8_row_names_its_quantization() -> None:
    from inctrl_bench.measure import BackendResult
    from inctrl_runtime.manifest import QuantizationRecord

    record = {"format": "qdq", "activations": "int8-symmetric", "method": "minmax"}
    record |= {"weights": "int8-symmetric-per-channel", "images": 2, "image_digests": ["a", "b"]}
    kept = QuantizationRecord.from_manifest(record).summary()
    split = {"split": "every block product int8"}  # an older record: no products listed
    assert kept == {**{k: v for k, v in record.items() if k != "image_digests"}, **split}
    assert QuantizationRecord.from_manifest(None) is None  # a float encoder records none
    int8 = BackendResult("onnxruntime-cpu-int8", "onnxruntime", "int8", "cpu", reason="x")
    int8.quantization = kept
    assert int8.to_dict()["quantization"] == kept
    printed = " ".join(_report_with([int8]).split())
    assert (
        "onnxruntime-cpu-int8: qdq int8, activations int8-symmetric, weights "
        "int8-symmetric-per-channel, minmax calibration on 2 images; split: every block "
        "product int8"
    ) in printed


@pytest.mark.cli
def test_encoders_timed_in_turn_give_one_row_a_bundle_against_the_first(
    tiny_bundle: Path, capsys
) -> None:
    from inctrl_bench.encoders import main

    main([tiny_bundle, tiny_bundle], batch="1,2", rounds=2, seconds=0.01)
    printed = capsys.readouterr().out.splitlines()
    assert "cores" in printed[0] and "median of 2 rounds" in printed[1]
    assert printed[2] == "| bundle | encoder | b=1 | vs | b=2 | vs |"
    rows = [line.split(" | ") for line in printed[4:]]
    assert len(rows) == 2 and all(row[1] == "fp32" for row in rows)
    assert rows[0][3] == rows[0][5].rstrip(" |") == "1.00x"  # the first against itself
    assert all(float(row[2]) > 0 and float(row[4]) > 0 for row in rows)
