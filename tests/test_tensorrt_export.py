"""``inctrl-export tensorrt`` on a CPU: the builder's TensorRT names (one list, each defined by
the installed TensorRT 11 bindings; no INT8 flag, no calibrator), profiles from the bundle's
graphs, the help, and every refusal that comes before a build (no builder or GPU, precision, an
int8 encoder other than symmetric Q/DQ, sizes, existing plans), and an int8 bundle with
symmetric Q/DQ passing every check up to the builder.

Building and running plans needs a GPU with TensorRT: tests/test_tensorrt_gpu.py.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import io
import json
from pathlib import Path

import pytest
import typer

import inctrl_export
from inctrl_export.cli import app, main
from inctrl_export.parity import OutputDiff, ParityReport
from inctrl_export.tensorrt import BUILDER_API, default_timing_cache, graph_profiles, off_opt
from inctrl_export.tensorrt_checks import check_no_plans, export_command
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.engines.tensorrt.cuda import ComputeCapability
from inctrl_runtime.engines.tensorrt.plans import Build, PlanRecord, build_key, plan_file
from inctrl_runtime.errors import InputError
from inctrl_runtime.manifest import ENGINES_KEY, MANIFEST

from helpers import BUNDLE_CATEGORIES, run_main, snapshot

BUILDER_SOURCE = Path(inctrl_export.__file__).parent / "tensorrt_build.py"
# The builder's variables, by the TensorRT class each holds (the naming the builder keeps to).
BUILDER_OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "error": "ParserError",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "cache": "ITimingCache",
}
# In the 10.x API, gone from 11 (strongly typed networks take their precision from the graph,
# int8 from its Q/DQ nodes: no INT8 flag, no calibrators).
REMOVED_IN_11 = ("EXPLICIT_BATCH", "FP16", "INT8", "platform_has_fast_fp16", "platform_has_tf32",
                 "int8_calibrator", "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator",
                 "set_calibration_profile")  # fmt: skip
# What an int8 export with static Q/DQ records on its encoder (the first two are what TensorRT
# needs; the digests are made up: these checks read the manifest only).
QDQ_INT8 = {"format": "qdq", "activations": "int8-symmetric",
            "weights": "int8-symmetric-per-channel", "method": "minmax", "images": 2,
            "image_digests": ["0" * 64, "1" * 64]}  # fmt: skip
INT8_EXPORT = "inctrl-export onnx --precision int8 -c tiny.safetensors --calibration DIR --category"


def _attribute_chain(node: ast.Attribute) -> list[str]:
    """``trt.ILogger.Severity.ERROR`` -> ["trt", "ILogger", "Severity", "ERROR"] ([] when the
    chain does not start at a plain name)."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return [node.id, *reversed(parts)] if isinstance(node, ast.Name) else []


def _object_name(node: ast.expr) -> str | None:
    """The variable an attribute is read from: ``config`` or ``self.config``."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.attr if node.value.id == "self" else None
    return None


def used_tensorrt_names() -> dict[str, set[str]]:
    """Every TensorRT name tensorrt_build.py reads (owner -> names): chains from ``trt`` and
    attributes of the builder's objects, and the ILogger methods it overrides."""
    tree = ast.parse(BUILDER_SOURCE.read_text())
    used: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _attribute_chain(node)
            if chain[:1] == ["trt"]:
                owners = ["tensorrt", *(".".join(chain[1:i]) for i in range(2, len(chain)))]
                for owner, name in zip(owners, chain[1:], strict=True):
                    used.setdefault(owner, set()).add(name)
            holder = _object_name(node.value)
            if holder in BUILDER_OBJECTS:
                used.setdefault(BUILDER_OBJECTS[holder], set()).add(node.attr)
        if isinstance(node, ast.ClassDef) and any(
            _attribute_chain(base) == ["trt", "ILogger"]
            for base in node.bases
            if isinstance(base, ast.Attribute)
        ):
            overridden = {f.name for f in node.body if isinstance(f, ast.FunctionDef)}
            used.setdefault("ILogger", set()).update(overridden & {"log", "__init__"})
    return used


def full_bindings() -> tuple[bytes, set[str]]:
    """The installed full TensorRT bindings (not imported: their libraries are NVIDIA's): the
    compiled module's bytes, and the names the package's __init__ defines in Python."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("tensorrt_bindings is not installed: pip install -e '.[dev]'")
    folder = Path(next(iter(spec.submodule_search_locations)))
    binary = (folder / "tensorrt.so").read_bytes()
    tree = ast.parse((folder / "__init__.py").read_text())
    assigned = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    return binary, assigned


def defined_in(binary: bytes, name: str) -> bool:
    """Whether a compiled module holds ``name`` as a C string: NUL-delimited, or the tail of a
    longer string (the linker merges ``Builder`` into ``IExprBuilder``'s last bytes)."""
    return name.encode() + b"\0" in binary


@pytest.mark.unit
def test_builder_api_is_the_one_list_of_tensorrt_names_the_builder_uses() -> None:
    used = used_tensorrt_names()
    listed = {owner: set(names) for owner, names in BUILDER_API.items() if names}
    assert used == listed
    assert {"builder", "network", "parser", "config", "profile", "cache"} <= {
        name.id for name in ast.walk(ast.parse(BUILDER_SOURCE.read_text()))
        if isinstance(name, ast.Name)
    }  # fmt: skip


@pytest.mark.unit
def test_every_listed_name_is_defined_by_the_tensorrt_11_bindings() -> None:
    binary, python_names = full_bindings()
    names = {part for owner in BUILDER_API for part in owner.split(".") if part != "tensorrt"}
    names |= {name for values in BUILDER_API.values() for name in values}
    missing = [n for n in sorted(names) if not (defined_in(binary, n) or n in python_names)]
    assert not missing
    assert b"\0build_serialized_network\0" in binary  # whole strings where not merged
    assert "__version__" in python_names


@pytest.mark.unit
def test_the_classes_the_lean_runtime_shares_have_the_listed_members() -> None:
    """The lean bindings (importable here) define some of the builder's classes as the full
    ones do: their members are checked on the real classes."""
    lean = importlib.import_module("tensorrt_lean_bindings")
    shared = ["BuilderFlag", "MemoryPoolType", "ILogger", "ILogger.Severity", "ITimingCache"]
    shared.append("IOptimizationProfile")
    for owner in shared:
        holder = lean
        for part in owner.split("."):
            holder = getattr(holder, part)
        for name in BUILDER_API[owner]:
            assert hasattr(holder, name), f"{owner}.{name}"
    assert not {"FP16", "INT8"} & set(lean.BuilderFlag.__members__)


@pytest.mark.unit
def test_no_name_removed_in_tensorrt_11_is_used() -> None:
    used = {name for names in used_tensorrt_names().values() for name in names}
    source = BUILDER_SOURCE.read_text()
    for name in REMOVED_IN_11:
        assert name not in used
        assert f".{name}" not in source
    binary, _ = full_bindings()
    assert not defined_in(binary, "EXPLICIT_BATCH")  # the check finds what is gone, too
    assert not defined_in(binary, "platform_has_fast_fp16")
    assert not defined_in(binary, "int8_calibrator")
    assert not defined_in(binary, "IInt8EntropyCalibrator2")


@pytest.mark.unit
def test_profiles_follow_the_bundles_graphs(tiny_bundle: Path) -> None:
    bundle = Bundle.open(tiny_bundle)
    batch, shots = (1, 8, 32), (1, 2, 8)
    found = graph_profiles(bundle, batch, shots)
    patches = bundle.model.num_patches
    for graph, info in bundle.graphs.items():
        dynamic = {spec.name: spec.shape for spec in info.inputs if not all(
            isinstance(d, int) for d in spec.shape)}  # fmt: skip
        assert set(found[graph]) == set(dynamic), graph
        for name, shape in dynamic.items():
            for i, profile_shape in enumerate(found[graph][name]):
                sizes = {"batch": batch[i], "prompt_patches": shots[i] * patches}
                assert profile_shape == tuple(sizes.get(d, d) for d in shape), (graph, name)
    assert found["head"]["ref_patches"][2][1] == 8 * patches
    assert found["encoder"]["image"][1] == (8, 3, bundle.model.image_size, bundle.model.image_size)


@pytest.mark.unit
def test_the_check_runs_off_the_profiles_opt() -> None:
    assert off_opt((1, 8, 32)) == 9
    assert off_opt((1, 8, 8)) == 7
    assert off_opt((1, 2, 8)) == 3
    assert off_opt((4, 4, 4)) == 4  # a fixed profile has no other size


@pytest.mark.cli
def test_help_explains_every_option() -> None:
    command = typer.main.get_command(app).commands["tensorrt"]
    options = [param for param in command.params if param.param_type_name == "option"]
    assert len(options) == 12
    for option in options:
        assert option.help and len(option.help) > 20, option.name
    precision = next(option for option in options if option.name == "precision")
    assert precision.help.startswith("fp32, fp16 or int8 (from an encoder with symmetric Q/DQ")
    shown = run_main(main, "tensorrt", "--help")
    assert shown.code == 0
    flat = " ".join(shown.out.split())
    for flag in ("--checkpoint", "--clip-weights", "--batch", "--shots", "--timing-cache",
                 "--version-compatible", "--workspace", "--precision", "--force", "--atol",
                 "--json", "--no-verify"):  # fmt: skip
        assert flag in flat, flag
    assert "inctrl[tensorrt]" in flat and "inctrl[tensorrt-lean]" in flat
    assert "BUNDLE.timing-cache" in "".join(shown.out.split())


@pytest.mark.unit
def test_the_timing_cache_lives_beside_the_bundle(tmp_path: Path) -> None:
    assert default_timing_cache(tmp_path / "candle") == tmp_path / "candle.timing-cache"


@pytest.mark.cli
def test_without_a_builder_or_gpu_one_line_says_which(bundle: Path, tiny_checkpoint: Path):
    from inctrl_export.tensorrt import builder_problem
    from inctrl_runtime.engines.tensorrt.cuda import gpu_problem

    if builder_problem() is None:
        pytest.skip("this machine has TensorRT's builder and a CUDA GPU")
    before = snapshot(bundle.parent)
    done = run_main(main, "tensorrt", bundle, "-c", tiny_checkpoint)
    phrases = ["cannot build TensorRT engines here", 'pip install "inctrl[tensorrt]"']
    try:
        importlib.import_module("tensorrt_bindings")
    except (ImportError, OSError) as err:
        phrases += ["the TensorRT builder is missing", str(err)]  # the import's own reason
    if gpu_problem(0) is not None:
        phrases.append(gpu_problem(0))  # the runtime's words for what the GPU lacks
    done.assert_refused(*phrases)
    assert snapshot(bundle.parent) == before  # nothing in the bundle, no timing cache beside


@pytest.mark.cli
@pytest.mark.parametrize(
    ("options", "phrases"),
    [
        (["--precision", "fp16"], ["holds an fp32 encoder", "inctrl-export onnx --precision fp16 "
          "-c tiny.safetensors --category candle --category metal_nut --out"]),
        (["--precision", "bf16"], ["unknown --precision 'bf16'"]),
        (["--precision", "int8"], ["holds an fp32 encoder", INT8_EXPORT]),
        (["--batch", "8,1,32"], ["--batch 8,1,32: give MIN,OPT,MAX in increasing order"]),
        (["--batch", "1,8"], ["--batch 1,8: give MIN,OPT,MAX"]),
        (["--batch", "one,8,32"], ["--batch one,8,32: give MIN,OPT,MAX"]),
        (["--batch", "2,8,32"], ["--batch 2,8,32: MIN must be 1"]),
        (["--shots", "0,2,8"], ["--shots 0,2,8: give MIN,OPT,MAX"]),
        (["--workspace", "0"], ["--workspace must be at least 1 MiB"]),
        (["--atol", "-1"], ["--atol must be a finite number"]),
    ],
)  # fmt: skip
def test_bad_options_are_refused_before_the_builder(
    bundle: Path, tiny_checkpoint: Path, options: list[str], phrases: list[str]
) -> None:
    before = snapshot(bundle.parent)
    run_main(main, "tensorrt", bundle, "-c", tiny_checkpoint, *options).assert_refused(*phrases)
    assert snapshot(bundle.parent) == before


@pytest.mark.cli
def test_the_source_checkpoint_is_checked_before_the_builder(bundle: Path, tmp_path: Path):
    run_main(main, "tensorrt", bundle).assert_refused("exported from tiny.safetensors",
                                                      "--checkpoint")  # fmt: skip
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"not the checkpoint")
    run_main(main, "tensorrt", bundle, "-c", other).assert_refused("not the checkpoint")


def _quantized_by_hand(bundle: Path, precision: str, record: dict | None) -> None:
    """The manifest's encoder recorded as quantized: ``precision`` and the quantization
    ``record`` (None: no record, as int8 exports with dynamic quantization wrote it); the graph
    itself unchanged, as the checks before a build read the manifest only."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    encoder = manifest["graphs"]["encoder"]
    encoder["precision"] = precision
    encoder.pop("quantization", None)
    if record is not None:
        encoder["quantization"] = record
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.cli
@pytest.mark.parametrize(
    ("precision", "record", "found"),
    [
        ("int8", None, "without a quantization record"),
        ("int8", {"format": "dynamic", "weights": "int8-symmetric-per-channel"},
         "quantized as format 'dynamic';"),
        ("int8", {**QDQ_INT8, "activations": "uint8-asymmetric"},
         "quantized as format 'qdq', activations 'uint8-asymmetric'"),
        ("int8", {**QDQ_INT8, "format": "qoperator"}, "quantized as format 'qoperator',"),
        ("int8-dynamic", {"format": "dynamic"}, "quantized as format 'dynamic';"),
    ],
)  # fmt: skip
def test_int8_other_than_symmetric_qdq_is_refused(
    bundle: Path, precision: str, record: dict | None, found: str
) -> None:
    _quantized_by_hand(bundle, precision, record)
    before = snapshot(bundle.parent)
    for options in ([], ["--precision", precision]):
        done = run_main(main, "tensorrt", bundle, *options)
        done.assert_refused(f"encoder.onnx: an {precision} encoder {found}",
                            "TensorRT needs the symmetric Q/DQ int8", INT8_EXPORT)  # fmt: skip
    assert snapshot(bundle.parent) == before


@pytest.mark.cli
def test_symmetric_qdq_int8_passes_every_check_before_the_builder(
    bundle: Path, tiny_checkpoint: Path
) -> None:
    from inctrl_export.tensorrt import builder_problem

    if builder_problem() is None:
        pytest.skip("this machine has TensorRT's builder and a CUDA GPU")
    _quantized_by_hand(bundle, "int8", QDQ_INT8)
    before = snapshot(bundle.parent)
    for options in ([], ["--precision", "int8"], ["--no-verify"]):
        done = run_main(main, "tensorrt", bundle, "-c", tiny_checkpoint, *options)
        done.assert_refused("cannot build TensorRT engines here", 'pip install "inctrl[tensorrt]"')
    run_main(main, "tensorrt", bundle).assert_refused("exported from tiny.safetensors")
    run_main(main, "tensorrt", bundle, "--precision", "fp16").assert_refused(
        "holds an int8 encoder", "inctrl-export onnx --precision fp16 -c tiny.safetensors"
    )
    assert snapshot(bundle.parent) == before


@pytest.mark.unit
def test_the_export_to_run_names_the_checkpoint_and_categories(tiny_bundle: Path) -> None:
    command = export_command(Bundle.open(tiny_bundle), "fp16")
    categories = " ".join(f"--category {c}" for c in BUNDLE_CATEGORIES)
    assert command == (
        f"inctrl-export onnx --precision fp16 -c tiny.safetensors {categories} "
        f"--out {tiny_bundle}-fp16"
    )


def _record_by_hand(bundle: Path, key: str) -> None:
    """A build record for ``key`` in the manifest, as inctrl-export tensorrt writes it."""
    record = PlanRecord("encoder", plan_file("encoder", key), "0" * 64, 3, 1.0, {})
    build = Build(key, "fp32", "11.4.0.106", ComputeCapability(8, 9), False, False,
                  (1, 8, 32), (1, 2, 8), {"encoder": record})  # fmt: skip
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest[ENGINES_KEY] = {key: build.to_manifest()}
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.unit
@pytest.mark.parametrize("made", ["record", "plan file", "both"])
def test_existing_plans_are_kept_without_force(bundle: Path, made: str) -> None:
    key = build_key("fp32", "11.4.0.106", ComputeCapability(8, 9), False)
    if made in ("record", "both"):
        _record_by_hand(bundle, key)
    if made in ("plan file", "both"):
        (bundle / "engines").mkdir()
        (bundle / plan_file("head", key)).write_bytes(b"plan")
    opened = Bundle.open(bundle)
    with pytest.raises(InputError, match="already has TensorRT engines fp32.trt11.4.sm89") as err:
        check_no_plans(opened, key, force=False)
    assert "--force" in str(err.value) and "\n" not in str(err.value)
    check_no_plans(opened, key, force=True)
    check_no_plans(opened, build_key("fp32", "11.4.0.106", ComputeCapability(9, 0), False), False)
    check_no_plans(opened, build_key("fp32", "11.4.0.106", ComputeCapability(8, 9), True), False)


@pytest.mark.unit
def test_the_parity_report_names_its_backend(tiny_bundle: Path) -> None:
    from rich.console import Console

    stored = json.loads((tiny_bundle / MANIFEST).read_text())["verification"]
    assert stored["backend"] == "onnxruntime-cpu"
    score = OutputDiff("score", (9,), 1e-3, 2e-3, True)
    report = ParityReport("fp16", "candle", 3, 9, 9, 5e-3, "tensorrt", [score])
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(report.table())
    assert "tensorrt (fp16) vs PyTorch fp32" in console.export_text()
