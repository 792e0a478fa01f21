"""``inctrl-export triton`` (``inctrl_export.triton``): the repository of each ``--backend`` as
Triton reads it: every config.pbtxt parsed into Triton's own ``ModelConfig``, the encoder's
signature against the ONNX graph, the sizes asked for, the bundle copy and the entry's check of
the encoder file; and the exported python repository served by the real
tritonserver. Refusals and the command line: tests/test_triton_export_checks.py.

No GPU and no TensorRT here: the ``tensorrt`` variant is written from a manifest engines record
(the real format, ``inctrl_runtime.engines.tensorrt.plans.Build``) and a plan file whose bytes
the test makes up (``helpers.record_plan``). That is honest because the export never deserializes a
plan: it checks the file's size and sha256 against the record and copies it. Whether a real plan
serves is for a GPU machine with NVIDIA's Triton container (README, "Serving with Triton").
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from tritonclient.grpc import model_config_pb2

from inctrl_export.triton import export_triton
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import BundleError
from inctrl_runtime.manifest import read_manifest
from inctrl_runtime.triton.entry import check_encoder_file
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    ENCODER,
    ENCODER_FILES,
    ENTRY,
    MODELS,
    VERSION,
)

from helpers import (
    CATEGORY,
    PLAN_BYTES,
    TRITON_FPR,
    assert_same_records,
    random_images,
    read_triton_configs,
    require_serving,
)

BACKENDS = ("onnxruntime", "tensorrt", "python")
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "tensorrt": "tensorrt_plan"}
ModelConfig = model_config_pb2.ModelConfig
FP32 = model_config_pb2.DataType.Value("TYPE_FP32")
KIND = model_config_pb2.ModelInstanceGroup.Kind


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


@pytest.fixture(scope="module", params=BACKENDS)
def exported(request, exportable_bundle: Path, tmp_path_factory) -> tuple[str, Path]:
    """(backend, repository) of each --backend, --max-batch 8, --instances 2."""
    out = tmp_path_factory.mktemp(request.param) / "repo"
    export_triton(exportable_bundle, out, request.param, max_batch=8, instances=2)
    return request.param, out


@pytest.mark.unit
def test_every_config_parses_as_tritons_model_config(exported: tuple[str, Path]) -> None:
    backend, repository = exported
    configs = read_triton_configs(repository)
    assert set(configs) == set(MODELS)
    for name, config in configs.items():
        assert config.name == name
        assert (repository / name / VERSION).is_dir()
    assert configs[ENTRY].backend == "python" and not configs[ENTRY].platform
    encoder = configs[ENCODER]
    if backend == "python":
        assert encoder.backend == "python" and not encoder.platform
    else:
        assert encoder.platform == PLATFORMS[backend] and not encoder.backend
        assert (repository / ENCODER / VERSION / ENCODER_FILES[backend]).is_file()
        assert not (repository / ENCODER / VERSION / "model.py").exists()


@pytest.mark.unit
def test_the_encoder_config_is_the_onnx_graphs_signature(
    exported: tuple[str, Path], exportable_bundle: Path
) -> None:
    """Names, types and dims as the ONNX graph has them (onnx.load), every dim fixed as the
    manifest records it (Triton needs fixed dims but for the batch)."""
    backend, repository = exported
    encoder = read_triton_configs(repository)[ENCODER]
    inputs, outputs = onnx_signature(exportable_bundle / "encoder.onnx")
    assert_accepts(inputs, tensors(encoder.input))
    assert_accepts(outputs, tensors(encoder.output))
    graph = Bundle.open(exportable_bundle).graphs["encoder"]
    for specs, entries in ((graph.inputs, encoder.input), (graph.outputs, encoder.output)):
        assert tensors(entries) == {s.name: (FP32, tuple(s.shape[1:])) for s in specs}
    if backend == "onnxruntime":  # the file Triton loads is that graph, byte for byte
        served = repository / ENCODER / VERSION / ENCODER_FILES[backend]
        assert served.read_bytes() == (exportable_bundle / "encoder.onnx").read_bytes()
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
    configs = read_triton_configs(repository)
    assert {c.max_batch_size for c in configs.values()} == {8}
    encoder = configs[ENCODER]
    sizes = list(encoder.dynamic_batching.preferred_batch_size)
    assert sizes and max(sizes) == 8 and min(sizes) >= 1
    assert encoder.dynamic_batching.max_queue_delay_microseconds > 0
    (group,) = encoder.instance_group
    assert group.count == 2
    kinds = {"tensorrt": KIND.KIND_GPU, "onnxruntime": KIND.KIND_AUTO, "python": KIND.KIND_CPU}
    assert group.kind == kinds[backend]
    entry = configs[ENTRY]  # its instances decode and run the head beside the encoder's
    assert list(entry.dynamic_batching.preferred_batch_size) == sizes
    assert [(g.count, g.kind) for g in entry.instance_group] == [(2, KIND.KIND_CPU)]


@pytest.mark.unit
def test_the_bundle_travels_with_the_repository(
    exported: tuple[str, Path], exportable_bundle: Path
):
    """The entry's copy of the bundle opens with every checksum, holds the registered bank, and
    records the encoder file Triton loads (the entry checks that file against it): the bundle's
    encoder.onnx, or the recorded plan's bytes."""
    backend, repository = exported
    copy = Bundle.open(repository / ENTRY / BUNDLE_COPY, check_files=True)
    assert read_manifest(copy.path) == read_manifest(exportable_bundle)
    assert (
        copy.reference_path("candle").read_bytes()
        == (exportable_bundle / "references" / "candle.npz").read_bytes()
    )
    if backend in ENCODER_FILES:
        served = (repository / ENCODER / VERSION / ENCODER_FILES[backend]).read_bytes()
        (build,) = copy.builds.values()
        recorded = {copy.encoder_sha256, build.plans["encoder"].sha256}
        assert hashlib.sha256(served).hexdigest() in recorded
    if backend == "tensorrt":
        assert served == PLAN_BYTES


@pytest.mark.unit
@pytest.mark.parametrize("backend", ["onnxruntime", "tensorrt"])
def test_the_entry_takes_the_exported_encoder_file_and_no_other(
    exportable_bundle: Path, tmp_path: Path, backend: str
) -> None:
    """The entry's load-time check (``check_encoder_file``) against the bundle copy: the file
    as exported passes; one byte changed (a new file: the exported one is hard-linked to the
    bundle's) is refused."""
    out = tmp_path / "repo"
    export_triton(exportable_bundle, out, backend)
    copy = Bundle.open(out / ENTRY / BUNDLE_COPY)
    check_encoder_file(out, copy)
    served = out / ENCODER / VERSION / ENCODER_FILES[backend]
    data = bytearray(served.read_bytes())
    data[-1] ^= 0x01
    served.unlink()
    served.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 is not the bundle manifest's"):
        check_encoder_file(out, copy)


@pytest.mark.parity
def test_the_exported_repository_serves_without_the_bundle_it_came_from(
    exportable_bundle: Path, tmp_path: Path
) -> None:
    """The python variant, moved to another folder and its source bundle removed, is served by
    the real tritonserver from the bundle copy inside it: its records are the runtime's (scores
    within 1e-5, the same decisions and regions)."""
    require_serving()
    from inctrl_runtime.triton.client import TritonClient
    from inctrl_runtime.triton.server import TritonServer

    bundle = Path(shutil.copytree(exportable_bundle, tmp_path / "bundle"))
    export_triton(bundle, tmp_path / "made" / "repo", "python", max_batch=4, fpr=TRITON_FPR)
    repository = Path(shutil.move(tmp_path / "made" / "repo", tmp_path / "moved"))
    images = random_images(3, seed=41)
    detector = Detector.open(bundle)
    try:
        want = [r.record() for r in detector.results(CATEGORY, images, fpr=TRITON_FPR)]
    finally:
        detector.close()
    shutil.rmtree(bundle)
    with TritonServer(repository) as server:
        got = TritonClient(server.http_url).records(CATEGORY, images)
    assert want[0]["threshold"] is not None  # calibrated: the decisions are compared too
    assert want[0]["regions"] is not None  # and the regions
    assert_same_records(got, want)
