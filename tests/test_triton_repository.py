"""The Triton repository of a bundle without a server: every config.pbtxt parses with Triton's
own ``ModelConfig`` and is wired with the ONNX graphs' names; the writer's layout, refusals
and bundle copy; and the python models' stages run on numpy, opened from the written configs
as Triton opens them, the entry calling the python encoder's stage where the server would call
the encoder model (scores, decisions, regions and tiles equal ``Detector.results``', rows
grouped by category, bad requests refused alone, banks read again when registered anew, the
encoder file checked)."""

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
from inctrl_runtime.triton.configs import encoder_config
from inctrl_runtime.triton.entry import EntryStage
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    CONFIG,
    ENCODER,
    ENTRY,
    FRAME_SIZE,
    IMAGE,
    MODELS,
    OUTPUTS,
    PYTHON_MODEL,
    VERSION,
)
from inctrl_runtime.triton.names import (
    CATEGORY as CATEGORY_INPUT,
)
from inctrl_runtime.triton.repository import write_repository
from inctrl_runtime.triton.stages import EncoderStage, ModelArgs, concatenate, split
from inctrl_runtime.triton.wire import record_of

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
    assert tensors(configs[ENCODER].input) == encoder_in
    assert tensors(configs[ENCODER].output) == encoder_out
    assert tensors(configs[ENTRY].input) == {IMAGE: [1], CATEGORY_INPUT: [1], "watched": [1]}
    assert [t.optional for t in configs[ENTRY].input] == [False, False, True]
    assert [t.name for t in configs[ENTRY].output] == list(OUTPUTS)
    from tritonclient.grpc.model_config_pb2 import DataType

    entry = configs[ENTRY]
    types = {t.name: DataType.Name(t.data_type) for t in entry.output}
    assert types[FRAME_SIZE] == types["decisive_tile"] == "TYPE_INT32"
    assert types["regions"] == types["tiling"] == "TYPE_STRING"
    assert types["inspected_fraction"] == types["region_threshold"] == "TYPE_FP32"
    assert tensors(entry.output)["patch_residual_map"] == [-1]  # P values, or a tiled T * P
    for model in MODELS:
        config = configs[model]
        assert config.backend == "python" and config.max_batch_size == 32
        assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
        assert config.dynamic_batching.max_queue_delay_microseconds > 0
        source = resources.files("inctrl_runtime.triton.models") / (
            "entry.py" if model == ENTRY else "encoder.py"
        )
        assert (repository / model / VERSION / PYTHON_MODEL).read_text() == source.read_text()
    assert entry.parameters["bundle"].string_value == str(served_bundle.resolve())
    assert entry.parameters["categories"].string_value == ",".join(BUNDLE_CATEGORIES)
    rates = {key: entry.parameters[key].string_value for key in ("fpr", "region_fpr")}
    assert rates == {"fpr": repr(TRITON_FPR), "region_fpr": repr(TRITON_FPR)}  # regions: fpr


def local_encoder(repository: Path):
    """What the entry model's ``bls_encoder`` is on a server, without one: a function that
    runs the repository's python encoder model (its stage, opened as Triton opens it) in
    batches of at most its ``max_batch``."""

    def encoder(bundle: Bundle, max_batch: int):
        stage = EncoderStage.open(load_args(repository, ENCODER))

        def encode(pixels: np.ndarray) -> dict[str, np.ndarray]:
            parts = [stage.run([{"image": pixels[i : i + max_batch]}])[0]
                     for i in range(0, len(pixels), max_batch)]  # fmt: skip
            return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}

        return encode

    return encoder


def open_entry(repository: Path, encoder_repository: Path | None = None) -> EntryStage:
    """The entry model's stage, opened as Triton opens it, its encoder ``local_encoder``'s."""
    encoder = local_encoder(encoder_repository or repository)
    return EntryStage.open(load_args(repository, ENTRY), encoder)


def test_onnxruntime_and_tensorrt_encoders(served_bundle, tmp_path):
    repository = write_repository(served_bundle, tmp_path / "r", encoder="onnxruntime")
    config = parse(repository / ENCODER / CONFIG)
    assert config.platform == "onnxruntime_onnx" and not config.backend
    model = repository / ENCODER / VERSION / "model.onnx"
    assert model.read_bytes() == (served_bundle / "encoder.onnx").read_bytes()
    assert not (repository / ENCODER / VERSION / PYTHON_MODEL).exists()
    python = write_repository(served_bundle, tmp_path / "python")  # its encoder runs here
    open_entry(repository, python).close()  # the entry accepts the bundle's encoder
    model.unlink()
    model.write_bytes(b"another model")
    with pytest.raises(BundleError, match="model.onnx: its sha256 is not the bundle manifest's"):
        open_entry(repository, python)
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
    python = write_repository(bundle, tmp_path / "python")
    with pytest.raises(BundleError, match="model.plan: its sha256 is not the bundle manifest's"):
        open_entry(repository, python)  # the bundle records no such build
    record = {"file": "engines/encoder.plan", "sha256": file_sha256(plan), "bytes": 19,
              "build_seconds": 1.0, "profiles": {}}  # fmt: skip
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["engines"] = {"fp32.trt11.4.sm89": {
        "precision": "fp32", "tensorrt": "11.4.0.106", "compute_capability": "8.9",
        "version_compatible": False, "batch": [1, 8, 32], "shots": [1, 2, 8],
        "plans": {"encoder": record},
    }}  # fmt: skip
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    open_entry(repository, python).close()


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
    copy = repository / ENTRY / BUNDLE_COPY
    assert read_manifest(copy) == read_manifest(served_bundle)
    assert [p.name for p in (copy / "references").iterdir()] == [f"{CATEGORY}.npz"]
    args = ModelArgs.parse(load_args(repository, ENTRY))
    assert args.parameters["bundle"] == f"{ENTRY}/{BUNDLE_COPY}"
    assert args.bundle().path == copy and args.categories == (CATEGORY,) and args.threads is None
    assert args.max_batch == 32
    unregistered = Path(shutil.copytree(tiny_bundle, tmp_path / "bare"))
    with pytest.raises(InputError, match=f"category '{CATEGORY}' is not registered"):
        write_repository(unregistered, tmp_path / "r2", categories=[CATEGORY])


def test_concatenate_and_split_keep_each_requests_rows():
    requests = [{"x": np.arange(n * 2).reshape(n, 2) + 100 * n} for n in (1, 3, 2)]
    joined, rows = concatenate(requests, ["x"])
    assert joined["x"].shape == (6, 2)
    for request, answer in zip(requests, split(joined, rows), strict=True):
        assert np.array_equal(request["x"], answer["x"])


def rows_of(items: list[bytes]) -> np.ndarray:
    return np.array(items, dtype=object).reshape(-1, 1)


def request(files: list[bytes], categories: list[str | bytes]) -> dict[str, np.ndarray]:
    names = [c.encode() if isinstance(c, str) else c for c in categories]
    return {IMAGE: rows_of(files), CATEGORY_INPUT: rows_of(names)}


def assert_answers(answer, detector: Detector, images, categories, fpr: float) -> None:
    """Each row of an entry answer, read as the client reads it, is ``Detector.results``'
    record of its image."""
    assert set(answer) == set(OUTPUTS)
    for row, (image, category) in enumerate(zip(images, categories, strict=True)):
        want = detector.results(category, [image], fpr=fpr)[0].record()
        mine = {name: array[row : row + 1] for name, array in answer.items()}
        got = record_of(want["image"], mine.__getitem__)
        assert_same_records([got], [want])
        calibrated = detector.registered(category).calibration is not None
        assert (got["threshold"] is not None) == (got["regions"] is not None) == calibrated


def test_the_entry_scores_as_the_detector_and_refuses_requests_alone(served_bundle, tmp_path):
    bundle = Path(shutil.copytree(served_bundle, tmp_path / "bundle"))
    tiled, frame = OTHER, (300, 520)  # registered anew, tiled
    detector = Detector.open(bundle)
    detector.register(tiled, random_images(2, seed=71, size=frame), tiling=Tiling(1, 2))
    detector.calibrate(tiled, random_images(12, seed=72, size=frame))
    repository = write_repository(bundle, tmp_path / "r", threads=1, fpr=TRITON_FPR)
    entry = open_entry(repository)
    images = random_images(5, seed=70, size=VARIED_SIZES)
    frames = random_images(3, seed=73, size=frame)
    files, framed = [png_bytes(i) for i in images], [png_bytes(i) for i in frames]
    names = [[CATEGORY, CATEGORY], [CATEGORY, CATEGORY, CATEGORY]]
    answers = entry.run([
        request(files[:2], names[0]),
        request([b"junk"], [CATEGORY]),
        request(files[2:], names[1]),
        request(files[:1], ["nope"]),
        request(files[:1], [b"\xff\xfe"]),
        request(framed, [tiled] * 3),
        request(files[:1], [tiled]),  # not the tiled bank's frame size
        request([framed[0], files[0]], [tiled, CATEGORY]),  # a tiled and a whole map
        request(files[:2], [CATEGORY]),  # two images, one category
    ])  # fmt: skip
    assert "not a readable image" in str(answers[1])
    assert "category 'nope' has no text prior" in str(answers[3])
    assert "not utf-8" in str(answers[4])
    assert "a 240 x 240 frame; its tiles are compared with" in str(answers[6])
    assert "scored with 1 and 2 tiles a frame: send them apart" in str(answers[7])
    assert "names 1 categories: give one category per image" in str(answers[8])
    assert_answers(answers[0], detector, images[:2], names[0], entry.fpr)
    assert_answers(answers[2], detector, images[2:], names[1], entry.fpr)
    assert_answers(answers[5], detector, frames, [tiled] * 3, entry.fpr)
    maps = [answers[i]["patch_residual_map"] for i in (0, 5)]
    assert maps[1].shape[1] == 2 * maps[0].shape[1]  # a frame's two tiles' maps
    assert detector.monitor(tiled).status().observed == 3  # the frames answered, no other
    unwatched = request(framed[:1], [tiled]) | {"watched": np.array([[False]])}
    assert set(entry.run([unwatched])[0]) == set(OUTPUTS)
    assert detector.monitor(tiled).status().observed == 3  # a probe's image is not a part
    assert answers[5]["decisive_tile"].min() >= 0 and (answers[0]["decisive_tile"] == -1).all()
    entry.close()


def test_the_entry_serves_a_bank_registered_anew(repository, served_bundle, tmp_path):
    bundle = Path(shutil.copytree(served_bundle, tmp_path / "bundle"))
    detector = Detector.open(bundle)
    image = random_images(1, seed=80)
    entry = EntryStage(detector.bundle, detector.head_engine, detector.encode, 0.1)
    asked = request([png_bytes(image[0])], [OTHER])
    before = entry.run([asked])[0]["score"]
    detector.register(OTHER, random_images(3, seed=81))
    after = entry.run([asked])[0]["score"]
    assert abs(float(after[0, 0]) - float(before[0, 0])) > 1e-6
    assert abs(float(after[0, 0]) - detector.results(OTHER, image)[0].score) <= 1e-6
    frames = random_images(2, seed=82, size=(300, 520))
    detector.register(OTHER, frames[:1], tiling=Tiling(1, 2))  # served tiled from now on
    (answer,) = entry.run([request([png_bytes(frames[1])], [OTHER])])
    assert abs(float(answer["score"][0, 0]) - detector.results(OTHER, frames[1:])[0].score) <= 1e-6
    (bundle / "references" / f"{OTHER}.npz").unlink()
    (answer,) = entry.run([asked])
    assert f"category '{OTHER}' is not registered" in str(answer)
    hostile = request([png_bytes(image[0])], [b"a\n\x1b[31mb"])
    (answer,) = entry.run([hostile])  # a served error quotes the name escaped, command included
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
    entry = EntryStage.open(load_args(repository, ENTRY), lambda bundle, size: None)
    entry.close()  # reads the manifest, head.onnx and priors.json
    with pytest.raises(BundleError, match="encoder.onnx: sha256 differs"):
        EncoderStage.open(load_args(repository, ENCODER))
