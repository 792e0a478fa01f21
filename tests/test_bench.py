"""inctrl-bench: FLOP counts by hand, backend selection, the JSON report of a run of every
backend on the tiny model, one-line errors, and a bench of a bundle with torch unimportable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import run_command

from inctrl import get_config
from inctrl_bench.backends import CATALOGUE, Sources, Unavailable, select_backends
from inctrl_bench.flops import ModelShape, encoder_flops, head_flops, query_flops
from inctrl_bench.suite import BenchSettings, check_sizes, run_bench
from inctrl_runtime.errors import InputError

NAMES = [backend.name for backend in CATALOGUE]
TIMING_KEYS = {"runs", "p50_ms", "p90_ms", "p99_ms", "stages_ms"}


@pytest.mark.unit
def test_flops_of_the_tiny_config_by_hand() -> None:
    # tiny: 240 px, patch 16 -> P = 225 patches, T = 226 tokens; width D = 64, 4 blocks,
    # MLP 4 x 64 = 256; embed E = 32, adapter 32 -> 8 -> 32; heads 128 -> 64 -> 1; 3 taps.
    patch_embedding = 2 * 225 * (3 * 16 * 16) * 64  # conv as a matmul: P x 768 @ 768 x D
    qkv = 2 * 226 * 64 * (3 * 64)
    scores = 2 * 226 * 226 * 64  # q @ k^T, heads together
    attention_v = 2 * 226 * 226 * 64
    out_projection = 2 * 226 * 64 * 64
    mlp = 2 * 226 * 64 * 256 + 2 * 226 * 256 * 64
    block = qkv + scores + attention_v + out_projection + mlp
    assert block == 35_292_160
    projection = 2 * 64 * 32  # class token through ln_post @ proj
    adapter = 2 * 32 * 8 + 2 * 8 * 32
    encoder = patch_embedding + 4 * block + projection + adapter
    assert encoder == 163_292_160

    k = 2
    similarity = 2 * 3 * 225 * (k * 225) * 64  # L x P x N x D
    image_head = 2 * (32 * 128 + 128 * 64 + 64 * 1)
    holistic_head = 2 * (225 * 128 + 128 * 64 + 64 * 1)
    text_score = 2 * 32 * 2
    head = similarity + image_head + holistic_head + text_score
    assert head == 38_978_944

    shape = ModelShape.from_config(get_config("tiny").to_dict())
    assert sum(encoder_flops(shape).values()) == encoder
    assert sum(head_flops(shape, k).values()) == head
    assert query_flops(shape, k) == encoder + head


@pytest.mark.unit
def test_backend_selection_by_name_and_prefix() -> None:
    assert [b.name for b in select_backends([])] == NAMES
    assert [b.name for b in select_backends(["onnxruntime"])] == [
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
        "onnxruntime-cuda-fp32",
        "onnxruntime-cuda-fp16",
    ]
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
@pytest.mark.parametrize("text", ["1,x", "0,8", "", "-1", "1.5"])
def test_bad_size_lists_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="--batch"):
        check_sizes(text, "--batch")
    assert check_sizes("32, 1,8,8", "--batch") == (1, 8, 32)


@pytest.mark.unit
def test_sources_of_a_given_bundle(tiny_checkpoint: Path, tiny_bundle: Path, tmp_path) -> None:
    checkpoint, bundle = tiny_checkpoint, tiny_bundle
    sources = Sources(tmp_path, bundle=bundle)
    assert sources.category == "candle"
    # The manifest names its source by file name only: the torch rows need --checkpoint.
    with pytest.raises(Unavailable, match=r"give --checkpoint \(.*exported from tiny\.safe"):
        sources.checkpoint()
    sources = Sources(tmp_path, bundle, checkpoint)
    assert sources.checkpoint() == checkpoint and sources.notes == []  # sha256 matches
    assert sources.bundle("fp32") == bundle
    with pytest.raises(Unavailable, match="given bundle's encoder is fp32"):
        sources.bundle("int8")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the same weights")
    assert "not the checkpoint" in Sources(tmp_path, bundle, other).notes[0]
    with pytest.raises(InputError, match="--preset builds its own model"):
        Sources(tmp_path, bundle=bundle, preset="tiny")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ({"checkpoint": "/elsewhere/old.pyth", "sha256": "0" * 64}, "exported from old.pyth"),
        ({"file": "new.safetensors", "sha256": "0" * 64}, "exported from new.safetensors"),
        ({}, "the bundle names no source checkpoint"),
        ({"file": "demo.safetensors", "sha256": "0" * 64, "demo": True}, None),
    ],
)
def test_torch_rows_of_a_bundle_need_its_checkpoint(
    source: dict, reason: str | None, bundle: Path, tmp_path
) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "source": source}))
    sources = Sources(tmp_path, bundle=bundle)
    if reason is None:
        assert sources.checkpoint() is None  # a demo bundle: the embedded demo
        return
    with pytest.raises(Unavailable, match=rf"^give --checkpoint \(.*{reason}\)$"):
        sources.checkpoint()


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
    assert set(record["machine"]["versions"]) == {"python", "torch", "onnxruntime", "onnx", "numpy"}
    assert record["machine"]["command"].startswith("inctrl-bench --checkpoint")
    assert record["settings"]["batches"] == [1, 2] and record["settings"]["device"] == "cpu"
    assert record["peak"]["gflops"] > 0
    assert record["flops"]["tiny"]["encoder_per_image"]["total"] == 163_292_160
    assert list(record["backends"]) == NAMES
    for name, backend in record["backends"].items():
        assert isinstance(backend["available"], bool)
        assert (backend["reason"] is None) == backend["available"], name
        if not backend["available"]:
            assert backend["reason"] and backend["speedup_vs_authors"] is None
            continue
        _check_timing(backend["latency"])
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
    assert [r.name for r in report.backends] == NAMES


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
def test_unwritable_outputs_are_refused_before_measuring(tmp_path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(InputError, match="--json .*cannot write in"):
        run_bench(BenchSettings(), json_file=not_a_folder / "bench.json")
    with pytest.raises(InputError, match="--plot .*is a folder"):
        run_bench(BenchSettings(), plot_file=tmp_path)


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "cudnn"], "unknown backend 'cudnn'"),
        (["--batch", "1,eight"], "--batch '1,eight'"),
        (["no_such_bundle"], "no_such_bundle: no such bundle folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path) -> None:
    result = run_command("inctrl_bench.cli", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and message in result.stderr


# Runs inctrl-bench in a process where importing torch fails, and says whether it got imported.
NO_TORCH = """
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ImportError("torch is blocked for this test")

sys.meta_path.insert(0, NoTorch())
from inctrl_bench.cli import main
try:
    main(sys.argv[1:])
except SystemExit as done:
    print("exit", done.code, "torch" in sys.modules)
"""


@pytest.mark.cli
def test_a_bundle_benches_with_torch_unimportable(tiny_bundle: Path, tmp_path) -> None:
    bundle = tiny_bundle
    out = tmp_path / "bench.json"
    args = [str(bundle), "--backend", "onnxruntime", "--backend", "torch-fp32"]
    args += ["--batch", "1,2", "--shots", "1", "--repeats", "1", "--json", str(out)]
    import subprocess

    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, *args], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip().endswith("exit 0 False"), result.stderr
    record = json.loads(out.read_text())
    backends = record["backends"]
    assert list(backends) == [
        "torch-fp32",
        "onnxruntime-cpu-fp32",
        "onnxruntime-cpu-int8",
        "onnxruntime-cuda-fp32",
        "onnxruntime-cuda-fp16",
    ]
    assert backends["onnxruntime-cpu-fp32"]["available"]
    assert backends["onnxruntime-cpu-fp32"]["speedup_vs_authors"] is None
    assert "torch is not importable" in backends["torch-fp32"]["reason"]
    assert "given bundle's encoder is fp32" in backends["onnxruntime-cpu-int8"]["reason"]
    rates = record["peak"]["rates"]
    assert "numpy matmul" in rates and "torch.matmul" not in rates
    assert record["machine"]["versions"]["torch"]  # installed, just not importable
