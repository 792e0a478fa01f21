"""The Triton repository of a bundle without a server: every config.pbtxt parses with Triton's
own ``ModelConfig`` and is wired with the ONNX graphs' names; the writer's layout, refusals
and bundle copy; and the python models' stages run on numpy, opened from the written configs
as Triton opens them (scores, decisions and regions equal ``Detector.results``', rows grouped
by category, bad requests refused alone, banks read again when registered anew, the encoder
file checked)."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import Calibration, decision_arrays
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.manifest import read_manifest
from inctrl_runtime.tiling import Tiling
from inctrl_runtime.triton.client import record_of
from inctrl_runtime.triton.configs import encoder_config
from inctrl_runtime.triton.head_stage import HeadStage
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    CONFIG,
    ENCODER,
    ENSEMBLE,
    FRAME_SIZE,
    HEAD,
    HEAD_OUTPUTS,
    IMAGE,
    MODELS,
    OUTPUTS,
    PIXELS,
    PREPROCESS,
    PYTHON_MODEL,
    VERSION,
)
from inctrl_runtime.triton.names import (
    CATEGORY as CATEGORY_INPUT,
)
from inctrl_runtime.triton.region_codec import frame_sizes
from inctrl_runtime.triton.repository import write_repository
from inctrl_runtime.triton.stages import (
    EncoderStage,
    ModelArgs,
    PreprocessStage,
    concatenate,
    split,
)

from helpers import (
    BUNDLE_CATEGORIES,
    CATEGORY,
    TRITON_FPR,
    VARIED_SIZES,
    assert_same_records,
    png_bytes,
    random_images,
    register_served,
)

pytest.importorskip("tritonclient.grpc", reason="parsing config.pbtxt needs tritonclient[grpc]")
pytestmark = pytest.mark.unit
OTHER = BUNDLE_CATEGORIES[1]


def parse(path: Path):
    """A config.pbtxt as Triton's ModelConfig (fails on any field Triton does not know)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def load_args(repository: Path, model: str) -> dict[str, str]:
    """What Triton gives a python model's ``initialize``: its folder and config as JSON."""
    from google.protobuf import json_format

    config = json_format.MessageToDict(
        parse(repository / model / CONFIG), preserving_proto_field_name=True
    )
    return {"model_config": json.dumps(config), "model_repository": str(repository / model)}


@pytest.fixture(scope="module")
def served_bundle(tiny_bundle: Path, tmp_path_factory) -> Path:
    """A copy of the tiny bundle: candle registered and calibrated, metal_nut registered."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("served") / "bundle"))
    register_served(bundle)
    return bundle


@pytest.fixture(scope="module")
def repository(served_bundle: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("repo") / "r"
    return write_repository(served_bundle, out, threads=1, fpr=TRITON_FPR)


def onnx_signature(file: Path) -> tuple[dict, dict]:
    session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
    return tuple(
        {a.name: list(a.shape[1:]) for a in args}
        for args in (session.get_inputs(), session.get_outputs())
    )


def tensors(entries) -> dict[str, list[int]]:
    return {t.name: list(t.dims) for t in entries}


def test_configs_parse_and_are_wired_with_the_graphs(repository, served_bundle):
    configs = {model: parse(repository / model / CONFIG) for model in MODELS}
    encoder_in, encoder_out = onnx_signature(served_bundle / "encoder.onnx")
    head_in, head_out = onnx_signature(served_bundle / "head.onnx")
    assert tensors(configs[ENCODER].input) == encoder_in
    assert tensors(configs[ENCODER].output) == encoder_out
    assert tensors(configs[PREPROCESS].output) == {PIXELS: encoder_in["image"], FRAME_SIZE: [2]}
    features = {k: v for k, v in head_in.items() if k in encoder_out}
    assert features == encoder_out
    assert tensors(configs[HEAD].input) == {**features, FRAME_SIZE: [2], CATEGORY_INPUT: [1]}
    assert {k: tensors(configs[HEAD].output)[k] for k in head_out} == {
        k: v or [1] for k, v in head_out.items()
    }
    assert [t.name for t in configs[ENSEMBLE].output] == list(OUTPUTS)
    assert [t.name for t in configs[HEAD].output] == list(HEAD_OUTPUTS)
    from tritonclient.grpc.model_config_pb2 import DataType

    types = {t.name: DataType.Name(t.data_type) for t in configs[ENSEMBLE].output}
    assert types[FRAME_SIZE] == "TYPE_INT32" and types["regions"] == "TYPE_STRING"
    assert types["inspected_fraction"] == types["region_threshold"] == "TYPE_FP32"
    # each step reads tensors the ensemble has by then, by its model's own input names
    available = {t.name for t in configs[ENSEMBLE].input}
    for step in configs[ENSEMBLE].ensemble_scheduling.step:
        model = configs[step.model_name]
        assert set(step.input_map) == {t.name for t in model.input}, step.model_name
        assert set(step.input_map.values()) <= available, step.model_name
        assert set(step.output_map) <= {t.name for t in model.output}, step.model_name
        available |= set(step.output_map.values())
    assert set(OUTPUTS) <= available
    for model in (PREPROCESS, ENCODER, HEAD):
        config = configs[model]
        assert config.backend == "python" and config.max_batch_size == 32
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        source = resources.files("inctrl_runtime.triton.models") / f"{model.split('_')[1]}.py"
        assert (repository / model / VERSION / PYTHON_MODEL).read_text() == source.read_text()
    assert configs[HEAD].parameters["bundle"].string_value == str(served_bundle.resolve())
    assert configs[HEAD].parameters["categories"].string_value == ",".join(BUNDLE_CATEGORIES)
    rates = {key: configs[HEAD].parameters[key].string_value for key in ("fpr", "region_fpr")}
    assert rates == {"fpr": repr(TRITON_FPR), "region_fpr": repr(TRITON_FPR)}  # regions: fpr


def test_onnxruntime_and_tensorrt_encoders(served_bundle, tmp_path):
    repository = write_repository(served_bundle, tmp_path / "r", encoder="onnxruntime")
    config = parse(repository / ENCODER / CONFIG)
    assert config.platform == "onnxruntime_onnx" and not config.backend
    model = repository / ENCODER / VERSION / "model.onnx"
    assert model.read_bytes() == (served_bundle / "encoder.onnx").read_bytes()
    assert not (repository / ENCODER / VERSION / PYTHON_MODEL).exists()
    HeadStage.open(load_args(repository, HEAD)).close()  # the head accepts the bundle's encoder
    model.unlink()
    model.write_bytes(b"another model")
    with pytest.raises(BundleError, match="model.onnx: its sha256 is not the bundle manifest's"):
        HeadStage.open(load_args(repository, HEAD))
    bundle = Bundle.open(served_bundle)
    plan = encoder_config(bundle, "tensorrt", 16, 2)
    path = tmp_path / "plan.pbtxt"
    path.write_text(plan)
    parsed = parse(path)
    assert parsed.platform == "tensorrt_plan" and parsed.instance_group[0].count == 2
    assert parsed.instance_group[0].kind == parsed.instance_group[0].KIND_GPU
    with pytest.raises(InputError, match="unknown encoder backend"):
        encoder_config(bundle, "openvino", 16, 1)


def test_the_head_checks_a_plan_against_the_manifests_builds(served_bundle, tmp_path):
    bundle = Path(shutil.copytree(served_bundle, tmp_path / "bundle"))
    plan = tmp_path / "encoder.plan"
    plan.write_bytes(b"a serialized engine")
    repository = write_repository(bundle, tmp_path / "r", encoder="tensorrt", encoder_file=plan)
    assert (repository / ENCODER / VERSION / "model.plan").read_bytes() == plan.read_bytes()
    with pytest.raises(BundleError, match="model.plan: its sha256 is not the bundle manifest's"):
        HeadStage.open(load_args(repository, HEAD))  # the bundle records no such build
    record = {"file": "engines/encoder.plan", "sha256": file_sha256(plan), "bytes": 19,
              "build_seconds": 1.0, "profiles": {}}  # fmt: skip
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {"fp32.trt11.4.sm89": {
        "precision": "fp32", "tensorrt": "11.4.0.106", "compute_capability": "8.9",
        "version_compatible": False, "batch": [1, 8, 32], "shots": [1, 2, 8],
        "plans": {"encoder": record},
    }}  # fmt: skip
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    HeadStage.open(load_args(repository, HEAD)).close()


def test_the_writer_refuses_and_leaves_nothing(served_bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(InputError, match="exists and is not empty"):
        write_repository(served_bundle, out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    write_repository(served_bundle, out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(MODELS)
    fresh = tmp_path / "fresh"
    for bad, phrase in [
        ({"categories": ["nope"]}, "has no text prior"),
        ({"max_batch": 0}, "--max-batch must be a whole number"),
        ({"instances": 1.5}, "--instances must be a whole number"),
        ({"fpr": 1.5}, "--fpr must be a rate"),
        ({"region_fpr": 0.0}, "--region-fpr must be a rate"),
        ({"encoder": "tensorrt"}, "needs its plan"),
    ]:
        with pytest.raises(InputError, match=phrase):
            write_repository(served_bundle, fresh, **bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # nothing staged is left


def test_a_copied_bundle_travels_with_the_repository(served_bundle, tiny_bundle, tmp_path):
    repository = write_repository(
        served_bundle, tmp_path / "r", categories=[CATEGORY], copy_bundle=True
    )
    copy = repository / HEAD / BUNDLE_COPY
    assert read_manifest(copy) == read_manifest(served_bundle)
    assert [p.name for p in (copy / "references").iterdir()] == [f"{CATEGORY}.npz"]
    args = ModelArgs.parse(load_args(repository, HEAD))
    assert args.parameters["bundle"] == f"{HEAD}/{BUNDLE_COPY}"
    assert args.bundle().path == copy and args.categories == (CATEGORY,) and args.threads is None
    unregistered = Path(shutil.copytree(tiny_bundle, tmp_path / "bare"))
    with pytest.raises(InputError, match=f"category '{CATEGORY}' is not registered"):
        write_repository(unregistered, tmp_path / "r2", categories=[CATEGORY])


def test_concatenate_and_split_keep_each_requests_rows():
    requests = [{"x": np.arange(n * 2).reshape(n, 2) + 100 * n} for n in (1, 3, 2)]
    joined, rows = concatenate(requests, ["x"])
    assert joined["x"].shape == (6, 2)
    for request, answer in zip(requests, split(joined, rows), strict=True):
        assert np.array_equal(request["x"], answer["x"])


def rows_of(images: list[bytes]) -> np.ndarray:
    return np.array(images, dtype=object).reshape(-1, 1)


def test_stages_score_as_the_detector_and_refuse_requests_alone(repository, served_bundle):
    preprocess = PreprocessStage.open(load_args(repository, PREPROCESS))
    encoder = EncoderStage.open(load_args(repository, ENCODER))
    head = HeadStage.open(load_args(repository, HEAD))
    images = random_images(5, seed=70, size=VARIED_SIZES)
    files = [png_bytes(image) for image in images]
    requests = [
        {IMAGE: rows_of(files[:2])},
        {IMAGE: rows_of([b"junk"])},
        {IMAGE: rows_of(files[2:])},
    ]
    made = preprocess.run(requests)
    assert isinstance(made[1], InputError) and "not a readable image" in str(made[1])
    frames = [made[0][FRAME_SIZE], made[2][FRAME_SIZE]]
    assert [list(frame) for part in frames for frame in part] == [
        [w, h] for h, w, _ in (image.shape for image in images)
    ]
    good = [{"image": made[0][PIXELS]}, {"image": made[2][PIXELS]}]  # the ensemble's map
    encoded = encoder.run(good)
    features = [{**f, FRAME_SIZE: frame} for f, frame in zip(encoded, frames, strict=True)]
    assert [len(f["patches"]) for f in features] == [2, 3]
    names = [[CATEGORY, OTHER], [OTHER, CATEGORY, CATEGORY]]
    asked = [
        {**features[0], CATEGORY_INPUT: rows_of([n.encode() for n in names[0]])},
        {**features[1], CATEGORY_INPUT: rows_of([b"nope"] * 3)},
        {**features[1], CATEGORY_INPUT: rows_of([n.encode() for n in names[1]])},
        {**features[0], CATEGORY_INPUT: rows_of([b"\xff\xfe", CATEGORY.encode()])},
    ]
    answers = head.run(asked)
    assert "category 'nope' has no text prior" in str(answers[1])
    assert "not utf-8" in str(answers[3])
    detector = Detector.open(served_bundle)
    order = [(answers[0], 0, images[:2], names[0]), (answers[2], 1, images[2:], names[1])]
    for answer, request, queries, categories in order:
        assert set(answer) == set(HEAD_OUTPUTS)
        outputs = {**answer, FRAME_SIZE: frames[request]}  # the ensemble's output
        for row, (image, category) in enumerate(zip(queries, categories, strict=True)):
            want = detector.results(category, [image], fpr=head.fpr)[0].record()
            mine = {name: array[row : row + 1] for name, array in outputs.items()}
            got = record_of(want["image"], mine.__getitem__)
            assert_same_records([got], [want])
            calibrated = category == CATEGORY  # decisions and regions at the rates served
            assert (got["threshold"] is not None) == (got["regions"] is not None) == calibrated
    for stage in (preprocess, encoder, head):
        stage.close()


def test_the_head_serves_a_bank_registered_anew(repository, served_bundle, tmp_path):
    bundle = Path(shutil.copytree(served_bundle, tmp_path / "bundle"))
    detector = Detector.open(bundle)
    image = random_images(1, seed=80)
    features = detector.encode(detector.pixels(image))
    head = HeadStage(detector.bundle, detector.head_engine, 0.1)
    frame = frame_sizes([image[0].shape[1::-1]])
    request = {**features, FRAME_SIZE: frame, CATEGORY_INPUT: rows_of([OTHER.encode()])}
    before = head.run([request])[0]["score"]
    detector.register(OTHER, random_images(3, seed=81))
    after = head.run([request])[0]["score"]
    assert abs(float(after[0, 0]) - float(before[0, 0])) > 1e-6
    assert abs(float(after[0, 0]) - detector.results(OTHER, image)[0].score) <= 1e-6
    detector.register(OTHER, random_images(2, seed=82, size=(300, 520)), tiling=Tiling(1, 2))
    (answer,) = head.run([request])  # a tiled category is not served (yet): refused, not wrong
    assert isinstance(answer, InputError) and "registered with 1x2 tiles" in str(answer)
    with pytest.raises(InputError, match="does not serve yet"):
        write_repository(bundle, tmp_path / "tiled", categories=[OTHER])
    with pytest.raises(InputError, match="name the categories to serve with --category"):
        write_repository(bundle, tmp_path / "all", copy_bundle=True)  # every registered one
    (bundle / "references" / f"{OTHER}.npz").unlink()
    (answer,) = head.run([request])
    assert f"category '{OTHER}' is not registered" in str(answer)
    hostile = {**features, FRAME_SIZE: frame, CATEGORY_INPUT: rows_of([b"a\n\x1b[31mb"])}
    (answer,) = head.run([hostile])  # a served error quotes the name escaped, command included
    assert isinstance(answer, InputError) and str(answer).isprintable(), str(answer)
    assert "--category a\\n\\x1b[31mb" in str(answer)


def test_decision_arrays_say_none_as_nan_and_false():
    scores = np.array([0.1, 0.5, 0.9], np.float32)
    none = decision_arrays(None, scores, 0.1)
    assert np.isnan(none["p_value"]).all() and np.isnan(none["threshold"]).all()
    assert not none["anomalous"].any()
    small = Calibration.of(np.linspace(0, 1, 5), ["d"] * 5, "onnxruntime-cpu", "fp32", "0" * 64)
    few = decision_arrays(small, scores, 0.1)  # 5 normals: p-values, no threshold at 0.1
    assert np.allclose(few["p_value"], small.decide(scores, 0.1).p_value)
    assert np.isnan(few["threshold"]).all() and not few["anomalous"].any()
    enough = Calibration.of(
        np.linspace(0, 0.8, 19), ["d"] * 19, "onnxruntime-cpu", "fp32", "0" * 64
    )
    decided = decision_arrays(enough, scores, 0.1)
    want = enough.decide(scores, 0.1)
    assert np.allclose(decided["threshold"], want.threshold)
    assert decided["anomalous"].tolist() == want.anomalous.tolist() == [False, False, True]


def test_each_model_hashes_only_what_it_reads(served_bundle, tmp_path):
    """A python model instance checks the sha256 of the files it reads, not of every file
    (the encoder, hundreds of MB for the full model, once per instance of every model)."""
    bundle = Path(shutil.copytree(served_bundle, tmp_path / "bundle"))
    repository = write_repository(bundle, tmp_path / "repository", threads=1)
    data = bytearray((bundle / "encoder.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # the same size, another sha256
    (bundle / "encoder.onnx").write_bytes(bytes(data))
    PreprocessStage.open(load_args(repository, PREPROCESS)).close()  # reads the manifest
    HeadStage.open(load_args(repository, HEAD)).close()  # reads head.onnx and priors.json
    with pytest.raises(BundleError, match="encoder.onnx: sha256 differs"):
        EncoderStage.open(load_args(repository, ENCODER))
