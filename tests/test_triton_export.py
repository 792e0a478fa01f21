"""``inctrl-export triton`` (``inctrl_export.triton``): the repository of each ``--backend`` as
Triton reads it (every config.pbtxt parsed into Triton's own ``ModelConfig``), the ensemble's
wiring, the encoder's signature against the ONNX graph, the sizes asked for, and the refusals.

No GPU and no TensorRT here: the ``tensorrt`` variant is written from a manifest engines record
(the real format, ``inctrl_runtime.engines.plans.Build``) and a plan file whose bytes the test
makes up. That is honest because the export never deserializes a plan: it checks the file's
size and sha256 against the record and copies it. Whether a real plan serves is for a GPU
machine with NVIDIA's Triton container (README, "Serving with Triton").
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    CATEGORY,
    TRITON_FPR,
    random_images,
    register_served,
    require_serving,
    run_main,
    snapshot,
)
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from inctrl_export.cli import main
from inctrl_export.tensorrt import graph_profiles
from inctrl_export.triton import export_triton
from inctrl_runtime.bundle import MANIFEST, Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.engines.plans import (
    ENGINES_KEY,
    Build,
    ComputeCapability,
    PlanRecord,
    build_key,
    plan_file,
)
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.triton.head import check_encoder_file
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    CONFIG,
    ENCODER,
    ENCODER_FILES,
    ENSEMBLE,
    HEAD,
    MODELS,
    VERSION,
)

BACKENDS = ("onnxruntime", "tensorrt", "python")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
ModelConfig = model_config_pb2.ModelConfig
FP32 = model_config_pb2.DataType.Value("TYPE_FP32")
KIND = model_config_pb2.ModelInstanceGroup.Kind
TENSORRT = "11.4.0.106"
# Not a TensorRT plan: bytes the export copies and hashes (it never deserializes a plan).
PLAN_BYTES = b"made-up plan bytes: inctrl-export triton checks size and sha256, then copies"


def record_plan(
    bundle: Path,
    batch: tuple[int, int, int] = (1, 8, 32),
    precision: str = "fp32",
    sm: tuple[int, int] = (8, 9),
    version_compatible: bool = False,
) -> str:
    """Record an encoder plan in the manifest's ``engines`` as ``inctrl-export tensorrt`` does
    (its profile from the bundle's graphs and ``batch``), with ``PLAN_BYTES`` as its file;
    returns the build's key."""
    capability = ComputeCapability(*sm)
    key = build_key(precision, TENSORRT, capability, version_compatible)
    shapes = graph_profiles(Bundle.open(bundle), batch, (1, 2, 8))["encoder"]
    digest = hashlib.sha256(PLAN_BYTES).hexdigest()
    plan = PlanRecord("encoder", plan_file("encoder", key), digest, len(PLAN_BYTES), 1.0, shapes)
    build = Build(key, precision, TENSORRT, capability, version_compatible, False, batch, (1, 2, 8),
                  {"encoder": plan}, gpu="NVIDIA L4")  # fmt: skip
    (bundle / plan.file).parent.mkdir(exist_ok=True)
    (bundle / plan.file).write_bytes(PLAN_BYTES)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest.setdefault(ENGINES_KEY, {})[key] = build.to_manifest()
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    return key


def read_configs(repository: Path) -> dict[str, ModelConfig]:
    """Every model folder's config.pbtxt, parsed by Triton's own protobuf definitions."""
    configs = {}
    for folder in sorted(p for p in repository.iterdir() if p.is_dir()):
        configs[folder.name] = text_format.Parse((folder / CONFIG).read_text(), ModelConfig())
    return configs


def tensors(entries) -> dict[str, tuple[int, tuple[int, ...]]]:
    """A config's inputs or outputs: name -> (data type, dims)."""
    return {t.name: (t.data_type, tuple(t.dims)) for t in entries}


def onnx_signature(path: Path) -> tuple[dict, dict]:
    """An ONNX graph's inputs and outputs: name -> (Triton data type, dims after the batch; -1
    for a symbolic one), each checked to be float32 with a dynamic batch axis first."""

    def entries(values) -> dict:
        found = {}
        for value in values:
            tensor = value.type.tensor_type
            batch, *dims = tensor.shape.dim
            assert batch.dim_param and not batch.dim_value, (value.name, batch)
            assert tensor.elem_type == onnx.TensorProto.FLOAT, value.name
            found[value.name] = (FP32, tuple(d.dim_value if d.dim_value else -1 for d in dims))
        return found

    graph = onnx.load(str(path), load_external_data=False).graph
    return entries(graph.input), entries(graph.output)


def assert_accepts(graph: dict, config: dict) -> None:
    """A config's tensors are a graph's: the same names and types, and dims that Triton's
    backends accept (each the graph's, where the graph fixes it: a symbolic dim, -1, takes
    any; the exporter leaves some symbolic, e.g. the patch count of ``patches``)."""
    assert set(graph) == set(config)
    for name, (dtype, dims) in graph.items():
        assert config[name][0] == dtype, name
        assert len(config[name][1]) == len(dims), name
        assert all(g in (-1, c) for g, c in zip(dims, config[name][1], strict=True)), name


@pytest.fixture
def plans_bundle(bundle: Path) -> Path:
    """The tiny bundle with an encoder plan recorded (made-up bytes, see ``record_plan``)."""
    record_plan(bundle)
    return bundle


@pytest.fixture(scope="module")
def registered(tmp_path_factory, tiny_bundle: Path) -> Path:
    """The tiny bundle with candle registered and calibrated (metal_nut has a text prior only),
    and an encoder plan recorded (``record_plan``), in a folder of its own."""
    folder = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("registered") / "b"))
    record_plan(folder)
    register_served(folder, (CATEGORY,))
    return folder


@pytest.fixture(scope="module", params=BACKENDS)
def exported(request, registered: Path, tmp_path_factory) -> tuple[str, Path]:
    """(backend, repository) of each --backend, --max-batch 8, --instances 2."""
    out = tmp_path_factory.mktemp(request.param) / "repo"
    export_triton(registered, out, request.param, max_batch=8, instances=2)
    return request.param, out


@pytest.mark.unit
def test_every_config_parses_as_tritons_model_config(exported: tuple[str, Path]) -> None:
    backend, repository = exported
    configs = read_configs(repository)
    assert set(configs) == set(MODELS)
    for name, config in configs.items():
        assert config.name == name
        assert (repository / name / VERSION).is_dir()
    assert configs[ENSEMBLE].platform == "ensemble"
    encoder = configs[ENCODER]
    if backend == "python":
        assert encoder.backend == "python" and not encoder.platform
    else:
        assert encoder.platform == PLATFORMS[backend] and not encoder.backend
        assert (repository / ENCODER / VERSION / ENCODER_FILES[backend]).is_file()
        assert not (repository / ENCODER / VERSION / "model.py").exists()


@pytest.mark.unit
def test_the_ensemble_connects_tensors_that_exist(exported: tuple[str, Path]) -> None:
    """Each step maps every input of its model from a tensor the ensemble already has (its
    inputs or an earlier step's outputs) of the same type and dims, maps only outputs its model
    has, and the ensemble's outputs are all produced, with their types and dims."""
    configs = read_configs(exported[1])
    ensemble = configs[ENSEMBLE]
    have = tensors(ensemble.input)
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [m for m in MODELS if m != ENSEMBLE]
    for step in steps:
        model = configs[step.model_name]
        inputs, outputs = tensors(model.input), tensors(model.output)
        assert set(step.input_map) == set(inputs), step.model_name
        for own, outer in step.input_map.items():
            assert have[outer] == inputs[own], (step.model_name, own, outer)
        assert set(step.output_map) <= set(outputs), step.model_name
        for own, outer in step.output_map.items():
            assert outer not in have, (step.model_name, outer)  # one producer per tensor
            have[outer] = outputs[own]
    for name, spec in tensors(ensemble.output).items():
        assert have[name] == spec, name


@pytest.mark.unit
def test_the_encoder_config_is_the_onnx_graphs_signature(
    exported: tuple[str, Path], registered: Path
) -> None:
    """Names, types and dims as the ONNX graph has them (onnx.load), every dim fixed as the
    manifest records it (Triton needs fixed dims but for the batch)."""
    backend, repository = exported
    encoder = read_configs(repository)[ENCODER]
    inputs, outputs = onnx_signature(registered / "encoder.onnx")
    assert_accepts(inputs, tensors(encoder.input))
    assert_accepts(outputs, tensors(encoder.output))
    graph = Bundle.open(registered).graphs["encoder"]
    for specs, entries in ((graph.inputs, encoder.input), (graph.outputs, encoder.output)):
        assert tensors(entries) == {s.name: (FP32, tuple(s.shape[1:])) for s in specs}
    if backend == "onnxruntime":  # the file Triton loads is that graph, byte for byte
        served = repository / ENCODER / VERSION / ENCODER_FILES[backend]
        assert served.read_bytes() == (registered / "encoder.onnx").read_bytes()
        assert_runs_as_configured(served, encoder)


def assert_runs_as_configured(model: Path, config: ModelConfig) -> None:
    """onnxruntime runs the model on a batch of 2 inputs of the config's dims, and every output
    has the config's dims (what Triton checks of each response; symbolic dims of the graph
    included)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {t.name: rng.standard_normal((2, *t.dims), dtype=np.float32) for t in config.input}
    values = session.run([t.name for t in config.output], feeds)
    for tensor, value in zip(config.output, values, strict=True):
        assert value.shape == (2, *tensor.dims), (tensor.name, value.shape)


@pytest.mark.unit
def test_sizes_batching_and_instances_are_as_asked(exported: tuple[str, Path]) -> None:
    backend, repository = exported
    configs = read_configs(repository)
    assert {c.max_batch_size for c in configs.values()} == {8}
    encoder = configs[ENCODER]
    sizes = list(encoder.dynamic_batching.preferred_batch_size)
    assert sizes and max(sizes) == 8 and min(sizes) >= 1
    assert encoder.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = encoder.instance_group
    assert group.count == 2
    assert group.kind == (KIND.KIND_GPU if backend == "tensorrt" else KIND.KIND_CPU)
    assert not configs[ENSEMBLE].HasField("dynamic_batching")
    assert not configs[ENSEMBLE].instance_group


@pytest.mark.unit
def test_the_bundle_travels_with_the_repository(exported: tuple[str, Path], registered: Path):
    """The head's copy of the bundle opens with every checksum, holds the registered bank, and
    records the encoder file Triton loads (the head checks that file against it): the bundle's
    encoder.onnx, or the recorded plan's bytes."""
    backend, repository = exported
    copy = Bundle.open(repository / HEAD / BUNDLE_COPY, check_files=True)
    assert copy.manifest == Bundle.open(registered).manifest
    assert (
        copy.reference_path("candle").read_bytes()
        == (registered / "references" / "candle.npz").read_bytes()
    )
    if backend in ENCODER_FILES:
        served = (repository / ENCODER / VERSION / ENCODER_FILES[backend]).read_bytes()
        (build,) = copy.manifest[ENGINES_KEY].values()
        recorded = {copy.encoder_sha256, build["plans"]["encoder"]["sha256"]}
        assert hashlib.sha256(served).hexdigest() in recorded
    if backend == "tensorrt":
        assert served == PLAN_BYTES


@pytest.mark.unit
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_the_head_takes_the_exported_encoder_file_and_no_other(
    registered: Path, tmp_path: Path, backend: str
) -> None:
    """The head's load-time check (``check_encoder_file``) against the bundle copy: the file
    as exported passes; one byte changed (a new file: the exported one is hard-linked to the
    bundle's) is refused."""
    out = tmp_path / "repo"
    export_triton(registered, out, backend)
    copy = Bundle.open(out / HEAD / BUNDLE_COPY)
    check_encoder_file(out, copy)
    served = out / ENCODER / VERSION / ENCODER_FILES[backend]
    data = bytearray(served.read_bytes())
    data[-1] ^= 0x01
    served.unlink()
    served.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 is not the bundle manifest's"):
        check_encoder_file(out, copy)


@pytest.mark.unit
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_flipped_byte_is_refused_before_anything_is_written(
    plans_bundle: Path, tmp_path: Path, backend: str
) -> None:
    graph = plans_bundle / "head.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))
    before = snapshot(tmp_path)
    with pytest.raises(BundleError, match="head.onnx: sha256 differs from the manifest"):
        export_triton(plans_bundle, tmp_path / "repo", backend)
    assert snapshot(tmp_path) == before


@pytest.mark.unit
def test_a_plan_that_is_not_its_record_is_refused(plans_bundle: Path, tmp_path: Path) -> None:
    (plan,) = (plans_bundle / "engines").iterdir()
    plan.write_bytes(PLAN_BYTES[::-1])  # same size, other bytes
    with pytest.raises(BundleError, match="size or sha256 differ from the manifest"):
        export_triton(plans_bundle, tmp_path / "repo", "tensorrt")
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
def test_no_plans_say_to_run_inctrl_export_tensorrt(bundle: Path, tmp_path: Path) -> None:
    outcome = run_main(main, "triton", bundle, "--out", tmp_path / "repo", "--backend", "tensorrt")
    outcome.assert_refused("has no TensorRT engines", f"inctrl-export tensorrt {bundle}")
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
def test_a_profile_under_max_batch_names_the_batch_to_rebuild_with(
    bundle: Path, tmp_path: Path
) -> None:
    record_plan(bundle, batch=(1, 4, 16))
    outcome = run_main(
        main, "triton", bundle, "--out", tmp_path / "repo", "--backend", "tensorrt",
        "--max-batch", "32",
    )  # fmt: skip
    outcome.assert_refused("batches up to 16", "--batch 1,4,32 --force", "--max-batch 16")
    assert not (tmp_path / "repo").exists()
    export_triton(bundle, tmp_path / "repo", "tensorrt", max_batch=16)
    assert read_configs(tmp_path / "repo")[ENCODER].max_batch_size == 16


@pytest.mark.unit
def test_builds_are_chosen_by_precision_or_by_key(bundle: Path, tmp_path: Path) -> None:
    l4 = record_plan(bundle, sm=(8, 9))
    h100 = record_plan(bundle, sm=(9, 0))
    with pytest.raises(InputError, match="several TensorRT builds .*--engine KEY") as err:
        export_triton(bundle, tmp_path / "repo", "tensorrt")
    assert l4 in str(err.value) and h100 in str(err.value)
    result = export_triton(bundle, tmp_path / "repo", "tensorrt", engine=h100)
    assert result.build is not None and result.build.key == h100
    with pytest.raises(BundleError, match="has no TensorRT build 'fp32.trt11.4.sm75'"):
        export_triton(bundle, tmp_path / "other", "tensorrt", engine="fp32.trt11.4.sm75")


@pytest.mark.unit
def test_a_build_of_another_precision_is_not_served(bundle: Path, tmp_path: Path) -> None:
    record_plan(bundle, precision="fp16")
    with pytest.raises(BundleError, match="no TensorRT build holds a plan of the bundle's fp32"):
        export_triton(bundle, tmp_path / "repo", "tensorrt")


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "phrases"),
    [
        (("--category", "nosuch"), ("nosuch", "has no text prior")),
        (("--category", "metal_nut"), ("metal_nut", "not registered", "inctrl-run register")),
        (("--backend", "openvino"), ("unknown --backend 'openvino'",)),
        (("--engine", "fp32.trt11.4.sm89"), ("--engine", "--backend tensorrt")),
        (("--max-batch", "0"), ("--max-batch",)),
        (("--instances", "0"), ("--instances",)),
        (("--fpr", "1.5"), ("--fpr",)),
    ],
)
def test_bad_options_are_one_line(
    registered: Path, tmp_path: Path, args: tuple[str, ...], phrases: tuple[str, ...]
) -> None:
    outcome = run_main(main, "triton", registered, "--out", tmp_path / "repo", *args)
    outcome.assert_refused(*phrases)
    assert not (tmp_path / "repo").exists()


@pytest.mark.cli
@pytest.mark.parametrize("where", [".", ".."])
def test_force_never_replaces_the_bundle_itself(bundle: Path, where: str) -> None:
    before = snapshot(bundle.parent)
    outcome = run_main(main, "triton", bundle, "--out", bundle / where, "--force")
    outcome.assert_refused("holds the bundle", "would delete")
    assert snapshot(bundle.parent) == before


@pytest.mark.cli
def test_the_command_writes_and_replaces_only_with_force(registered: Path, tmp_path: Path):
    out = tmp_path / "repo"
    first = run_main(main, "triton", registered, "--out", out, "--category", "candle")
    assert first.code == 0, first.err
    assert f"wrote {out}: the onnxruntime encoder, on the CPU" in first.err
    head = read_configs(out)[HEAD]
    assert head.parameters["categories"].string_value == "candle"
    again = run_main(main, "triton", registered, "--out", out, "--backend", "python")
    again.assert_refused(str(out), "--force")
    assert read_configs(out)[ENCODER].platform == "onnxruntime_onnx"
    forced = run_main(main, "triton", registered, "--out", out, "--backend", "python", "--force")
    assert forced.code == 0, forced.err
    assert read_configs(out)[ENCODER].backend == "python"
    assert not (out / ENCODER / VERSION / "model.onnx").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["repo"]  # no staging folder left


@pytest.mark.cli
@pytest.mark.parametrize("version_compatible", [False, True])
def test_the_tensorrt_export_says_what_server_the_plan_needs(
    bundle: Path, tmp_path: Path, version_compatible: bool
) -> None:
    key = record_plan(bundle, version_compatible=version_compatible)
    out = tmp_path / "repo"
    outcome = run_main(main, "triton", bundle, "--out", out, "--backend", "tensorrt")
    assert outcome.code == 0, outcome.err
    for phrase in ("on the GPU", key, f"TensorRT is {TENSORRT}", "compute capability 8.9",
                   f"tritonserver --model-repository {out}"):  # fmt: skip
        assert phrase in outcome.err, phrase
    assert ("version-compatible=true" in outcome.err) == version_compatible


@pytest.mark.cli
def test_help_explains_every_option_and_the_gpu_deployment() -> None:
    outcome = run_main(main, "triton", "--help")
    assert outcome.code == 0
    text = " ".join(outcome.out.split())
    for option in ("--out", "--backend", "--max-batch", "--instances", "--category", "--fpr",
                   "--engine", "--force"):  # fmt: skip
        assert option in text, option
    for phrase in ("onnxruntime_onnx", "tensorrt_plan", "KIND_CPU", "KIND_GPU",
                   "docker run --gpus all", "nvcr.io/nvidia/tritonserver:<yy.mm>-py3",
                   "--model-repository /models",
                   "pip install \"inctrl[cpu]\"", "numpy<2"):  # fmt: skip
        assert phrase in text, phrase


@pytest.mark.parity
def test_the_exported_repository_serves_without_the_bundle_it_came_from(
    registered: Path, tmp_path: Path
) -> None:
    """The python variant, moved to another folder and its source bundle removed, is served by
    the real tritonserver from the bundle copy inside it: scores as the runtime's within 1e-5,
    the same decisions."""
    require_serving()
    from inctrl_runtime.triton.client import TritonClient
    from inctrl_runtime.triton.server import TritonServer

    bundle = Path(shutil.copytree(registered, tmp_path / "bundle"))
    export_triton(bundle, tmp_path / "made" / "repo", "python", max_batch=4, fpr=TRITON_FPR)
    repository = Path(shutil.move(tmp_path / "made" / "repo", tmp_path / "moved"))
    images = random_images(3, seed=41)
    detector = Detector.open(bundle)
    try:
        want = [r.record() for r in detector.score(CATEGORY, images, fpr=TRITON_FPR)]
    finally:
        detector.close()
    shutil.rmtree(bundle)
    with TritonServer(repository) as server:
        got = TritonClient(server.http_url).score(CATEGORY, images)
    assert want[0]["threshold"] is not None  # calibrated: the decisions are compared too
    for served, local in zip(got, want, strict=True):
        for name, value in local.items():
            if name == "image" or value is None or isinstance(value, bool):
                assert served[name] == value, name
            else:
                np.testing.assert_allclose(served[name], value, atol=1e-5, rtol=0, err_msg=name)
