"""Export: ONNX Runtime vs PyTorch parity, the manifest, fp16, refusals, the export CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from inctrl import InCTRL, Scores, get_config
from inctrl_export.bundle import export_bundle
from inctrl_export.graphs import graph_specs
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.manifest import SCHEMA_VERSION, VerificationWarning
from inctrl_runtime.results import Scores as RuntimeScores

from helpers import BUNDLE_CATEGORIES, perturb_heads, random_images, run_command

ATOL_FP32 = 1e-4  # docs/model.md: ONNX Runtime fp32 vs inctrl
ATOL_FP16 = 5e-3  # docs/model.md: fp16 vs inctrl fp32, scores


def assert_scores_close(ours: RuntimeScores, reference: Scores, atol: float, fields=None) -> None:
    for name in fields or Scores._fields:
        expected = getattr(reference, name).cpu().numpy()
        got = getattr(ours, name)
        assert got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, rtol=0, atol=atol, err_msg=name)


@pytest.fixture(scope="module")
def detector(tiny_bundle: Path) -> Detector:
    return Detector.open(tiny_bundle)


# Batch and k other than the tracing inputs (batch 2, k = 2) and the self-check's (3, 3).
@pytest.mark.parity
@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize("shots", [1, 3])
def test_onnxruntime_matches_pytorch(
    tiny_model: InCTRL, detector: Detector, batch: int, shots: int
) -> None:
    prompts = random_images(shots, seed=10 + shots, size=(300, 250))
    queries = random_images(batch, seed=20 + batch, size=(250, 330))
    prior = tiny_model.text_prior("candle")
    reference = tiny_model.score(queries, tiny_model.reference(prompts), prior, batch_size=batch)
    bank = detector.reference(prompts)
    ours = detector.score_arrays("candle", queries, bank=bank, batch_size=batch)
    assert_scores_close(ours, reference, ATOL_FP32)
    assert bank.shots == shots and bank.patches.shape[1] == shots * 225


@pytest.mark.parity
def test_batches_of_any_size_give_the_same_scores(detector: Detector) -> None:
    bank = detector.reference(random_images(2, seed=3))
    queries = random_images(5, seed=4)
    whole = detector.score_arrays("metal_nut", queries, bank=bank, batch_size=5)
    for batch_size in (1, 2, 3):
        split = detector.score_arrays("metal_nut", queries, bank=bank, batch_size=batch_size)
        np.testing.assert_allclose(split.score, whole.score, rtol=0, atol=1e-6)


@pytest.mark.parity
def test_priors_are_the_torch_text_priors(tiny_model: InCTRL, detector: Detector) -> None:
    for category in BUNDLE_CATEGORIES:
        expected = tiny_model.text_prior(category).matrix().numpy()
        np.testing.assert_array_equal(detector.bundle.prior(category), expected)


@pytest.mark.unit
def test_runtime_scores_mirror_the_torch_named_tuple(tiny_model: InCTRL) -> None:
    assert RuntimeScores._fields == Scores._fields
    assert tuple(graph_specs(tiny_model.config)["head"].outputs) == Scores._fields


@pytest.mark.unit
def test_rank_agreement_on_hand_computed_lists() -> None:
    from inctrl_export.parity import average_ranks, rank_agreement

    # One swapped pair of four: rho = 1 - 6 * 2 / (4 * 15), tau = (5 - 1) / 6.
    swapped = rank_agreement(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4]))
    assert swapped == pytest.approx({"spearman": 0.8, "kendall_tau": 2 / 3, "same_order": 5 / 6})
    # A tie: ranks 1, 2.5, 2.5, 4; rho = 4.5 / sqrt(4.5 * 5), tau-b = 5 / sqrt(5 * 6).
    tied = rank_agreement(np.array([1.0, 2, 2, 3]), np.array([1.0, 2, 3, 4]))
    expected = {"spearman": 0.9**0.5, "kendall_tau": 5 / 30**0.5, "same_order": 1.0}
    assert tied == pytest.approx(expected)
    np.testing.assert_array_equal(average_ranks(np.array([3.0, 1, 3, 2])), [3.5, 1, 3.5, 2])


@pytest.mark.unit
def test_manifest_names_the_checkpoint_by_file_name_and_sha256(
    tiny_bundle: Path, tiny_checkpoint: Path
) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    source = manifest["source"]
    assert source["file"] == tiny_checkpoint.name and "checkpoint" not in source
    assert source["sha256"] == file_sha256(tiny_checkpoint)

    def strings(value):
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            return [s for item in value for s in strings(item)]
        return [value] if isinstance(value, str) else []

    assert not [s for s in strings(manifest) if os.path.isabs(s) or os.sep in s]


@pytest.mark.unit
def test_manifest_describes_the_files(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert manifest["schema_version"] == SCHEMA_VERSION
    assert manifest["source"]["sha256"] == file_sha256(tiny_checkpoint)
    assert manifest["categories"] == list(BUNDLE_CATEGORIES)
    for name, record in manifest["files"].items():
        assert record["sha256"] == file_sha256(tiny_bundle / name)
        assert record["bytes"] == (tiny_bundle / name).stat().st_size
    for graph in manifest["graphs"].values():
        model = onnx.load(str(tiny_bundle / graph["file"]))
        assert [i.name for i in model.graph.input] == [i["name"] for i in graph["inputs"]]
        assert [o.name for o in model.graph.output] == [o["name"] for o in graph["outputs"]]
        batch = model.graph.input[0].type.tensor_type.shape.dim[0]
        assert batch.dim_param == "batch"  # dynamic, not the tracing batch
    verification = manifest["verification"]
    assert verification["passed"] and verification["max_abs_diff"] <= ATOL_FP32
    assert (verification["shots"], verification["queries"]) == (3, 3)
    judged = {o["name"]: o["judged"] for o in verification["outputs"]}
    assert judged == {"bank.patches": False, "bank.adapted_mean": False, "text_prior": True,
                      **dict.fromkeys(Scores._fields, True)}  # fmt: skip
    assert manifest["preprocessing"]["interpolation"] == "bicubic"
    assert not list(tiny_bundle.parent.glob(".tiny.*"))  # no staging folder left
    umask = os.umask(0)
    os.umask(umask)
    assert tiny_bundle.stat().st_mode & 0o777 == 0o777 & ~umask  # readable as a plain mkdir's


@pytest.mark.parity
def test_fp16_bundle_keeps_scores_within_contract(tiny_model: InCTRL, tmp_path: Path) -> None:
    result = export_bundle(tmp_path / "fp16", categories=["candle"], precision="fp16",
                           model=tiny_model)  # fmt: skip
    assert result.report.passed
    encoder = onnx.load(str(tmp_path / "fp16" / "encoder.onnx"))
    dtypes = {t.data_type for t in encoder.graph.initializer if len(t.dims) == 2}
    assert onnx.TensorProto.FLOAT16 in dtypes
    layer_norms = [n for n in encoder.graph.node if n.op_type == "LayerNormalization"]
    kept = {i.name: i.type.tensor_type.elem_type for i in encoder.graph.value_info}
    assert layer_norms and all(
        kept.get(n.input[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT for n in layer_norms
    )
    detector = Detector.open(tmp_path / "fp16")
    prompts, queries = random_images(2, seed=31), random_images(4, seed=32)
    reference = tiny_model.score(
        queries, tiny_model.reference(prompts), tiny_model.text_prior("candle")
    )
    ours = detector.score_arrays("candle", queries, bank=detector.reference(prompts))
    assert_scores_close(ours, reference, ATOL_FP16, fields=Scores._fields[:-1])


@pytest.mark.slow
def test_full_size_architecture_exports_and_matches(tmp_path: Path) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = perturb_heads(InCTRL(get_config("ViT-B-16-plus-240")))
    result = export_bundle(tmp_path / "full", categories=["candle"], model=model)
    assert result.report.passed, result.report.to_dict()
    assert result.file_bytes["encoder.onnx"] > 400e6
    detector = Detector.open(tmp_path / "full")
    prompts, queries = random_images(2, seed=41), random_images(2, seed=42)
    reference = model.score(queries, model.reference(prompts), model.text_prior("candle"))
    ours = detector.score_arrays("candle", queries, bank=detector.reference(prompts))
    assert_scores_close(ours, reference, ATOL_FP32)


@pytest.mark.cli
def test_failed_self_check_is_recorded_and_warned(tiny_model: InCTRL, tmp_path: Path) -> None:
    result = export_bundle(tmp_path / "b", categories=["candle"], atol=0.0, model=tiny_model)
    assert not result.report.passed
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["verification"]["passed"] is False
    with pytest.warns(VerificationWarning):
        Detector.open(tmp_path / "b")


@pytest.mark.cli
def test_a_failing_step_leaves_nothing(tiny_model: InCTRL, tmp_path: Path, monkeypatch) -> None:
    import inctrl_export.bundle as bundle_module

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle_module, "_write_priors", broken)
    with pytest.raises(OSError, match="disk full"):
        export_bundle(tmp_path / "b", categories=["candle"], model=tiny_model)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.unit
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"precision": "fp8"}, "unknown --precision"),
        ({"opset": 13}, "--opset 13 is not usable"),
        ({"categories": ["../evil"]}, "not usable"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    tiny_model: InCTRL, tmp_path: Path, options: dict, message: str
) -> None:
    options = {"categories": ["candle"], **options}
    with pytest.raises(InputError, match=message):
        export_bundle(tmp_path / "b", model=tiny_model, **options)
    assert not (tmp_path / "b").exists()


@pytest.mark.cli
def test_cli_export_and_verify(tiny_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    args = ["onnx", "-c", str(tiny_checkpoint), "--category", "candle", "--out", str(out)]
    done = run_command("inctrl_export.cli", *args, "--json", str(tmp_path / "check.json"))
    assert done.returncode == 0, done.stderr
    assert "parity PASSED" in done.stderr and json.loads((tmp_path / "check.json").read_text())
    again = run_command("inctrl_export.cli", *args)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "--force" in again.stderr
    verify = run_command(
        "inctrl_export.cli", "verify", str(out), "-c", str(tiny_checkpoint), "--json", "-"
    )
    assert verify.returncode == 0, verify.stderr
    report = json.loads(verify.stdout)
    assert report["passed"] and set(report["rank"]) == {"spearman", "kendall_tau", "same_order"}


@pytest.mark.cli
def test_cli_export_without_category_needs_one(tiny_checkpoint: Path, tmp_path: Path) -> None:
    args = ["onnx", "-c", str(tiny_checkpoint), "--out", str(tmp_path / "b")]
    done = run_command("inctrl_export.cli", *args)
    assert done.returncode == 2 and "no --category" in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "b").exists()


@pytest.mark.cli
def test_cli_verify_refuses_another_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.safetensors"
    perturb_heads(InCTRL(get_config("tiny")), seed=7).save(other)
    done = run_command("inctrl_export.cli", "verify", str(tiny_bundle), "-c", str(other))
    assert done.returncode == 2 and "not the checkpoint" in done.stderr
    assert "(tiny.safetensors, sha256 " in done.stderr  # the recorded file, by name


@pytest.mark.unit
def test_an_old_manifest_names_its_checkpoint_path_by_file_name(bundle: Path) -> None:
    from inctrl_export.verify import verify_bundle

    manifest = json.loads((bundle / "manifest.json").read_text())
    source = {key: value for key, value in manifest["source"].items() if key != "file"}
    source["checkpoint"] = "/elsewhere/runs/tiny.safetensors"  # as schema 1 recorded it
    (bundle / "manifest.json").write_text(json.dumps({**manifest, "source": source}))
    assert Detector.open(bundle).bundle.source_file == "tiny.safetensors"
    with pytest.raises(InputError, match="exported from tiny.safetensors; name that file") as err:
        verify_bundle(bundle)
    assert "/elsewhere" not in str(err.value)


@pytest.mark.cli
def test_cli_verify_fails_below_the_mark(tiny_bundle: Path, tiny_checkpoint: Path) -> None:
    args = ["verify", str(tiny_bundle), "-c", str(tiny_checkpoint), "--atol", "0"]
    done = run_command("inctrl_export.cli", *args)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "error: parity FAILED: " in done.stderr and "> atol 0" in done.stderr


@pytest.mark.parity
def test_verify_on_labelled_data_reports_auroc(tiny_checkpoint: Path, tmp_path: Path) -> None:
    from inctrl.synth import synthesize
    from inctrl_export.verify import verify_bundle

    synthesize(tmp_path / "data", seed=3, categories=1, images_per_category=8, size=240)
    (folder,) = (tmp_path / "data").iterdir()
    export_bundle(tmp_path / "b", tiny_checkpoint, categories=[folder.name], verify=False)
    report = verify_bundle(tmp_path / "b", tiny_checkpoint, images=folder, shots=2)
    tests = [p for p in (folder / "test").rglob("*.png")]
    assert report.passed and report.category == folder.name and report.queries == len(tests)
    assert set(report.auroc) == {"pytorch", "bundle", "change"}
    assert abs(report.auroc["change"]) <= 0.01 and report.rank["spearman"] > 0.99


@pytest.mark.parity
def test_int8_bundle_is_smaller_and_close(
    tiny_model: InCTRL, tiny_bundle: Path, tmp_path: Path
) -> None:
    # A model in memory, calibrated on a list of images (tests/test_int8.py: the rest of int8).
    result = export_bundle(tmp_path / "int8", categories=["candle"], precision="int8",
                           model=tiny_model, calibration=random_images(3, seed=90))  # fmt: skip
    assert result.report.passed and result.report.precision == "int8"
    encoder = onnx.load(str(tmp_path / "int8" / "encoder.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in encoder.graph.node)
    assert result.file_bytes["encoder.onnx"] < 0.7 * (tiny_bundle / "encoder.onnx").stat().st_size


@pytest.mark.cli
def test_cli_verify_on_a_plain_folder(tiny_bundle: Path, tiny_checkpoint: Path, tmp_path: Path):
    from PIL import Image

    for i, array in enumerate(random_images(4, seed=70, size=(280, 240))):
        Image.fromarray(array).save(tmp_path / f"{i}.png")
    args = ["verify", str(tiny_bundle), "-c", str(tiny_checkpoint), "--images", str(tmp_path)]
    done = run_command("inctrl_export.cli", *args, "-k", "2", "--json", "-")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["shots"], report["queries"], report["auroc"]) == (2, 2, None)
    too_few = run_command("inctrl_export.cli", *args, "-k", "4")
    assert too_few.returncode == 2 and "needs more than --shots 4" in too_few.stderr


@pytest.mark.cli
def test_cli_verify_with_a_missing_checkpoint(tiny_bundle: Path, tmp_path: Path) -> None:
    done = run_command("inctrl_export.cli", "verify", str(tiny_bundle), "-c", str(tmp_path / "x"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "no such checkpoint file" in done.stderr
