"""inctrl-bench before it measures: FLOP counts by hand, the CPU's vector extensions, size
lists and the engine profile they give, a given bundle's sources (its checkpoint, its missing
plans, plans built in a copy), and one-line refusals of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inctrl import get_config
from inctrl_bench.artifacts import Artifacts, engine_profile
from inctrl_bench.backends import Unavailable
from inctrl_bench.flops import ModelShape, encoder_flops, head_flops, query_flops
from inctrl_bench.suite import BenchSettings, parse_sizes, run_bench
from inctrl_runtime.errors import InputError

from helpers import run_command


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
def test_vector_extensions_from_the_cpu_flags() -> None:
    from inctrl_runtime.machine import vector_extensions

    cpuinfo = (
        "processor\t: 0\nmodel name\t: A CPU\nflags\t\t: fpu sse2 avx avx2 avx512f avx512bw "
        "avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16\n\nprocessor\t: 1\nflags\t\t: fpu\n"
    )
    assert vector_extensions(cpuinfo) == [
        "avx2",
        "avx512f",
        "avx512_vnni",
        "avx512_bf16",
        "amx_bf16",
        "amx_int8",
        "amx_tile",
    ]
    assert vector_extensions("flags\t: fpu sse2 avx2 avx_vnni\n") == ["avx2", "avx_vnni"]
    assert vector_extensions("Features\t: fp asimd\n") == []  # no x86 flags: unknown, empty


@pytest.mark.unit
@pytest.mark.parametrize("text", ["1,x", "0,8", "", "-1", "1.5"])
def test_bad_size_lists_are_refused(text: str) -> None:
    with pytest.raises(InputError, match="--batch"):
        parse_sizes(text, "--batch")
    assert parse_sizes("32, 1,8,8", "--batch") == (1, 8, 32)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("batches", "shots", "profile"),
    [
        ((1, 8, 32), (2, 4, 8), ((1, 8, 32), (2, 2, 8))),
        ((2,), (1,), ((1, 2, 2), (1, 1, 1))),
        ((1, 2), (1, 2, 8), ((1, 2, 8), (1, 1, 8))),  # registering k=8 encodes a batch of 8
    ],
)
def test_engine_profile_covers_what_the_bench_runs(batches, shots, profile) -> None:
    from inctrl_runtime.engines.tensorrt.plans import profile_sizes as check_profile

    assert engine_profile(batches, shots) == profile
    batch, prompts = profile
    assert check_profile(batch, "--batch") == batch and check_profile(prompts, "--shots") == prompts


@pytest.mark.unit
def test_native_rows_without_plans_name_the_missing_builder(bundle: Path, tmp_path) -> None:
    from inctrl_export.tensorrt import builder_problem

    missing = builder_problem()
    if missing is None:
        pytest.skip("TensorRT's builder runs here: the bench would build the plans")
    profile = engine_profile((1, 2), (1, 2))
    with pytest.raises(Unavailable) as refused:
        Artifacts(tmp_path / "work", bundle=bundle).engines("fp32", *profile)
    assert "has no TensorRT engines" in str(refused.value) and missing in str(refused.value)
    with pytest.raises(Unavailable, match="given bundle's encoder is fp32"):
        Artifacts(tmp_path / "work", bundle=bundle).engines("fp16", *profile)

    # A build recorded for k=1 only cannot serve queries with k=2 prompts.
    from inctrl_runtime.engines.tensorrt.cuda import ComputeCapability
    from inctrl_runtime.engines.tensorrt.plans import Build, PlanRecord

    plan = PlanRecord("encoder", "engines/encoder.fp32.trt11.4.sm89.plan", "0" * 64, 1, 2.0, {})
    build = Build(
        key="fp32.trt11.4.sm89",
        precision="fp32",
        tensorrt="11.4.0.106",
        compute_capability=ComputeCapability(8, 9),
        version_compatible=False,
        lean_runtime_embedded=False,
        batch=(1, 2, 2),
        shots=(1, 1, 1),
        plans={"encoder": plan, "head": plan},
    )
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {build.key: build.to_manifest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Unavailable) as refused:
        Artifacts(tmp_path / "work", bundle=bundle).engines("fp32", *engine_profile((1,), (2,)))
    assert "builds (fp32.trt11.4.sm89) do not run batch 1 with k=2" in str(refused.value)
    assert missing in str(refused.value)


@pytest.mark.unit
def test_sources_of_a_given_bundle(tiny_checkpoint: Path, tiny_bundle: Path, tmp_path) -> None:
    checkpoint, bundle = tiny_checkpoint, tiny_bundle
    sources = Artifacts(tmp_path, bundle=bundle)
    assert sources.category == "candle"
    # The manifest names its source by file name only: the torch rows need --checkpoint.
    with pytest.raises(Unavailable, match=r"give --checkpoint \(.*exported from tiny\.safe"):
        sources.checkpoint()
    sources = Artifacts(tmp_path, bundle, checkpoint)
    assert sources.checkpoint() == checkpoint and sources.notes == []  # sha256 matches
    assert sources.bundle("fp32") == bundle
    with pytest.raises(Unavailable, match="given bundle's encoder is fp32"):
        sources.bundle("int8")
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the same weights")
    assert "not the checkpoint" in Artifacts(tmp_path, bundle, other).notes[0]
    with pytest.raises(InputError, match="--preset builds its own model"):
        Artifacts(tmp_path, bundle=bundle, preset="tiny")


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
    sources = Artifacts(tmp_path, bundle=bundle)
    if reason is None:
        assert sources.checkpoint() is None  # a demo bundle: the embedded demo
        return
    with pytest.raises(Unavailable, match=rf"^give --checkpoint \(.*{reason}\)$"):
        sources.checkpoint()


@pytest.mark.unit
def test_plans_are_built_in_a_copy_of_a_given_bundle(bundle: Path, tmp_path) -> None:
    from inctrl_bench.artifacts import _copy_without_engines
    from inctrl_runtime.manifest import read_manifest

    (bundle / "engines").mkdir()
    (bundle / "engines" / "encoder.fp32.trt11.4.sm89.plan").write_bytes(b"plan")
    manifest = json.loads((bundle / "manifest.json").read_text())
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "engines": {"x": {}}}))
    before = sorted(path.relative_to(bundle) for path in bundle.rglob("*"))

    copy = _copy_without_engines(bundle, tmp_path / "copy")
    assert not (copy / "engines").exists() and "engines" not in read_manifest(copy)
    assert read_manifest(copy)["files"] == manifest["files"]  # every sha256 still holds
    assert sorted(path.relative_to(bundle) for path in bundle.rglob("*")) == before


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
        (["--eval", "no_such_data"], "--eval no_such_data: no such folder; give labelled"),
        (["--keep-fp32", "c_fc:x"], "--keep-fp32 'c_fc:x': give a product kind"),
        (["a_bundle", "--keep-fp32", "c_fc"], "--keep-fp32 splits the bench's own int8 export"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args: list[str], message: str, tmp_path) -> None:
    result = run_command("inctrl_bench.cli", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith("error: ") and message in result.stderr
