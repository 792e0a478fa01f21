"""Hostile but realistic input, as a table: damaged banks and manifests, misused options,
hostile names. Each case damages a fresh copy of a registered tiny bundle (or a work folder),
runs a real command line's ``main`` in process and asserts: exit 2, one ``error:`` line holding
the case's phrases, no traceback, and every byte of the bundle and the work folder unchanged.
Beside the table: a refusal in a real process, and Pillow's warning range.

The other hostile-input tests beside this file: the Python API, images (bombs, extreme aspect
ratios), writes (full and read-only disks, heatmap paths) and signals.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inctrl.cli
import inctrl_export.cli
import inctrl_runtime.cli
from inctrl_runtime.bundle import PRIORS
from inctrl_runtime.detector import Detector
from inctrl_runtime.files import file_sha256
from inctrl_runtime.references import NumpyBank

from helpers import Work, edit_manifest, forge, run_main, snapshot

MAINS = {
    "run": inctrl_runtime.cli.main,
    "inctrl": inctrl.cli.main,
    "export": inctrl_export.cli.main,
}


@dataclass(frozen=True)
class Case:
    """A hostile input: ``setup`` damages the workspace and returns the command's arguments."""

    name: str
    command: str  # a key of MAINS
    setup: Callable[[Work], list[str]]
    phrases: tuple[str, ...]


# ------------------------------------------------------------------------------ damage helpers
def bank_of(work: Work) -> NumpyBank:
    return NumpyBank.load(work.bank)


def save_bank(path: Path, **arrays) -> None:
    """Write a bank file with these arrays over the registered ones, bypassing NumpyBank.save
    (which would refuse or convert them)."""
    with np.load(path) as data:
        merged = {**{name: data[name] for name in data.files}, **arrays}
    with open(path, "wb") as handle:
        np.savez(handle, **merged)


def resave(work: Work, **changes) -> None:
    """Save the registered bank with some fields changed, through NumpyBank.save (so its digest
    is right: the content checks, not the digest, must refuse it)."""
    replace(bank_of(work), **changes).save(work.bank)


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # inside the patch tokens
    path.write_bytes(bytes(data))


def torch_bank(path: Path, patches: torch.Tensor, shots: int) -> None:
    from inctrl.state import ReferenceBank

    ReferenceBank(patches, torch.zeros(32), shots).save(path)


def hostile_pickle(path: Path) -> None:
    torch.save({"model_state": {"x": torch.zeros(1)}, "cfg": _Payload()}, path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("true",))


def prompts_json(work: Work, category: str) -> Path:
    """A JSON list of the authors' kind with one category, for ``inctrl prompts make``: its
    images lie under a ``train`` folder, so they are the category's training normals."""
    train = work.folder / "train"
    train.mkdir()
    images = [shutil.copy(p, train / p.name) for p in work.shots]
    entries = [{"image_path": str(p), "target": 0, "type": category} for p in images]
    path = work.folder / "list_normal.json"
    path.write_text(json.dumps(entries))
    return path


def after(damage: Callable[[Work], object], args: Callable[[Work], list[str]]):
    """A case's setup: the damage, then the command that meets it."""

    def setup(w: Work) -> list[str]:
        damage(w)
        return args(w)

    return setup


def score(w: Work) -> list[str]:
    return w.score()


# ------------------------------------------------------------------------------------ the table
CASES = [
    # 1. damaged bank files
    Case("bank truncated", "run", after(lambda w: truncate(w.bank), score),
         ("candle.npz", "damaged or truncated", "register")),
    Case("bank bit flipped", "run", after(lambda w: flip_a_bit(w.bank), score),
         ("candle.npz", "register")),
    Case("bank emptied", "run", after(lambda w: w.bank.write_bytes(b""), score),
         ("candle.npz", "register")),
    # 7 (and the decisions issue). calibrations stored with a bank
    Case("calibration unsorted", "run",
         after(lambda w: _calibrated(w, lambda scores: scores[::-1].copy()), score),
         ("candle.npz", "calibration scores are not finite and sorted")),
    Case("calibration incomplete", "run",
         after(lambda w: _calibrated(w, None), score),
         ("candle.npz", "calibration is incomplete")),
    # 7. banks whose contents do not fit the bundle
    Case("bank of another width", "run",
         after(lambda w: resave(w, patches=bank_of(w).patches[..., :-1]), score),
         ("candle.npz", "does not fit", "patch tokens")),
    Case("bank of another layer count", "run",
         after(lambda w: resave(w, patches=bank_of(w).patches[:2]), score),
         ("candle.npz", "does not fit")),
    Case("bank in float64", "run",
         after(lambda w: save_bank(w.bank, patches=bank_of(w).patches.astype(np.float64)),
              score),
         ("candle.npz", "float64", "not float32")),
    Case("bank with NaN", "run",
         after(lambda w: resave(w, patches=np.full_like(bank_of(w).patches, np.nan)), score),
         ("candle.npz", "not finite")),
    Case("bank with no prompts", "run",
         after(lambda w: save_bank(w.bank, patches=np.zeros((3, 0, 64), np.float32),
                                        shots=np.int64(0)), score),
         ("candle.npz", "register")),
    Case("bank copied to another category", "run",
         after(lambda w: shutil.copyfile(w.bank, w.bundle / "references" / "metal_nut.npz"),
              lambda w: ["score", str(w.bundle), "--category", "metal_nut", str(w.queries[0])]),
         ("metal_nut.npz", "'candle'", "not 'metal_nut'")),
    Case("bank of an older format", "run",
         after(lambda w: _old_format(w.bank), score),
         ("format 1", "inctrl-run register", "--category candle", "--shot", "image_0.png")),
    Case("torch --bank with no prompts", "inctrl",
         after(lambda w: torch_bank(w.folder / "b.safetensors", torch.zeros(3, 0, 64), 0),
              lambda w: w.torch_score("--bank", str(w.folder / "b.safetensors"))),
         ("b.safetensors", "not a valid reference bank")),
    Case("torch --bank with NaN", "inctrl",
         after(lambda w: torch_bank(w.folder / "b.safetensors",
                                         torch.full((3, 225, 64), math.nan), 1),
              lambda w: w.torch_score("--bank", str(w.folder / "b.safetensors"))),
         ("b.safetensors", "not finite")),
    Case("torch --bank of another width", "inctrl",
         after(lambda w: torch_bank(w.folder / "b.safetensors", torch.zeros(3, 225, 65), 1),
              lambda w: w.torch_score("--bank", str(w.folder / "b.safetensors"))),
         ("does not fit", "(3, 225, 65)")),
    # 6. device names, parsed once for both sides
    Case("torch --device nonsense", "inctrl", lambda w: w.torch_score("--device", "nonsense"),
         ("unknown device 'nonsense'", "cuda:N")),
    Case("torch --device cuda:abc", "inctrl", lambda w: w.torch_score("--device", "cuda:abc"),
         ("unknown device 'cuda:abc'",)),
    Case("runtime --device cuda:abc", "run", lambda w: w.score("--device", "cuda:abc"),
         ("unknown device 'cuda:abc'",)),
    Case("runtime --device cpu:1", "run", lambda w: w.score("--device", "cpu:1"),
         ("unknown device 'cpu:1'",)),
    # 8. manifests that point elsewhere or hold impossible values
    Case("graph file not listed", "run",
         after(lambda w: _unlisted_encoder(w), score),
         ("other.onnx", "not among the listed and hashed files")),
    Case("graph missing from files", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["files"].pop("encoder.onnx")), score),
         ("encoder.onnx", "not among the listed")),
    Case("graph file outside the bundle, listed and hashed", "run",
         after(lambda w: _graph_outside(w), score),
         ("../encoder.onnx", "not inside the bundle")),
    Case("listed file outside the bundle", "run",
         after(lambda w: _listed_outside(w), score),
         ("../x.onnx", "not inside the bundle")),
    Case("absolute file name", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["files"].update(
             {"/etc/hostname": {"sha256": "0" * 64, "bytes": 1}})), score),
         ("/etc/hostname", "not inside the bundle")),
    Case("preprocessing of another size", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["preprocessing"].update(
             resize_shorter_side=224, center_crop=224)), score),
         ("manifest.json", "224", "240")),
    Case("preprocessing std 0", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["preprocessing"].update(
             std=[0.0, 0.26, 0.27])), score),
         ("manifest.json", "std must be positive")),
    Case("preprocessing mean NaN", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["preprocessing"].update(
             mean=[math.nan, 0.4, 0.4])), score),
         ("manifest.json", "finite")),
    Case("NaN prior, hash forged", "run",
         after(lambda w: forge(w.bundle, PRIORS, _nan_prior), score),
         ("priors.json", "'candle'", "not finite")),
    Case("prior not unit, hash forged", "run",
         after(lambda w: forge(w.bundle, PRIORS, _long_prior), score),
         ("priors.json", "unit vectors")),
    Case("model record not numbers", "run",
         after(lambda w: edit_manifest(w.bundle, lambda m: m["model"].update(width="wide")), score),
         ("manifest.json", "width")),
    # 9. category names that would leave their folder
    Case("prompts make with a hostile type", "inctrl",
         lambda w: ["prompts", "make", str(prompts_json(w, "../../x/pm")), "--category",
                    "../../x/pm", "--shots", "1", "--out", str(w.folder / "out")],
         ("'../../x/pm'", "not usable as a file name")),
    # 11. pass marks
    Case("export --atol -1", "export",
         lambda w: ["onnx", "-c", str(w.checkpoint), "--category", "candle", "--atol", "-1",
                    "--out", str(w.folder / "b")],
         ("--atol", "-1")),
    Case("export --atol nan", "export",
         lambda w: ["onnx", "-c", str(w.checkpoint), "--category", "candle", "--atol", "nan",
                    "--out", str(w.folder / "b")],
         ("--atol", "nan")),
    Case("verify --atol inf", "export",
         lambda w: ["verify", str(w.bundle), "-c", str(w.checkpoint), "--atol", "inf"],
         ("--atol", "inf")),
    # 12. small ones
    Case("untrusted checkpoint", "inctrl",
         after(lambda w: hostile_pickle(w.folder / "evil.pyth"),
              lambda w: ["score", "-c", str(w.folder / "evil.pyth"), "--category", "candle",
                         "--shot", str(w.shots[0]), str(w.queries[0])]),
         ("evil.pyth", "not a trusted checkpoint")),
    Case("batch size 0", "run", lambda w: w.score("--batch-size", "0"), ("batch size",)),
]  # fmt: skip


def _calibrated(work: Work, change: Callable[[np.ndarray], np.ndarray] | None) -> None:
    """Calibrate candle on the queries, then damage the stored scores (``change``) or, with
    None, drop one of the calibration's arrays."""
    Detector.open(work.bundle).calibrate("candle", work.queries)
    with np.load(work.bank) as data:
        arrays = {name: data[name] for name in data.files}
    if change is None:
        del arrays["calibration_backend"]
    else:
        arrays["calibration_scores"] = change(arrays["calibration_scores"])
    with open(work.bank, "wb") as handle:
        np.savez(handle, **arrays)


def _old_format(path: Path) -> None:
    """The bank as inctrl 0.1 wrote it: no format version, category or digest."""
    with np.load(path) as data:
        old = {n: data[n] for n in data.files if n not in ("format_version", "category", "digest")}
    with open(path, "wb") as handle:
        np.savez(handle, **old)


def _unlisted_encoder(work: Work) -> None:
    """Another encoder dropped into the bundle and named by the graph record, but not listed."""
    shutil.copyfile(work.bundle / "encoder.onnx", work.bundle / "other.onnx")
    edit_manifest(work.bundle, lambda m: m["graphs"]["encoder"].update(file="other.onnx"))


def _graph_outside(work: Work) -> None:
    """The encoder graph named as ``../encoder.onnx``: a real encoder there, listed with its
    sha256 and size, as a careful forger would (the old runtime loaded it)."""
    outside = work.bundle.parent / "encoder.onnx"
    shutil.copyfile(work.bundle / "encoder.onnx", outside)
    record = {"sha256": file_sha256(outside), "bytes": outside.stat().st_size}

    def change(manifest: dict) -> None:
        manifest["graphs"]["encoder"]["file"] = "../encoder.onnx"
        manifest["files"]["../encoder.onnx"] = record

    edit_manifest(work.bundle, change)


def _listed_outside(work: Work) -> None:
    outside = work.bundle.parent / "x.onnx"
    shutil.copyfile(work.bundle / "encoder.onnx", outside)
    record = {"sha256": file_sha256(outside), "bytes": outside.stat().st_size}
    edit_manifest(work.bundle, lambda m: m["files"].update({"../x.onnx": record}))


def _priors_edited(change: Callable[[list[float]], list[float]]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        priors = json.loads(path.read_text())
        priors["candle"]["normal"] = change(priors["candle"]["normal"])
        path.write_text(json.dumps(priors))

    return write


_nan_prior = _priors_edited(lambda v: [math.nan] + v[1:])
_long_prior = _priors_edited(lambda v: [2 * x for x in v])


@pytest.mark.cli
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_input_is_refused_in_one_line_and_changes_nothing(case: Case, work: Work) -> None:
    args = case.setup(work)
    before = {"bundle": snapshot(work.bundle), "work": snapshot(work.folder)}
    outcome = run_main(MAINS[case.command], *args)
    outcome.assert_refused(*case.phrases)
    assert {"bundle": snapshot(work.bundle), "work": snapshot(work.folder)} == before
    assert "weights_only" not in outcome.err


@pytest.mark.cli
def test_prompts_make_writes_nothing_outside_out(work: Work) -> None:
    """The hostile ``type`` of defect 9 would have written <out>/../../x/pm.pt."""
    args = CASES[[c.name for c in CASES].index("prompts make with a hostile type")].setup(work)
    run_main(MAINS["inctrl"], *args)
    assert not (work.folder / "out").exists()
    assert not (work.folder.parent / "x").exists() and not (work.folder / "x").exists()


@pytest.mark.cli
def test_torch_side_device_refusal_in_a_real_process(work: Work) -> None:
    """The installed command, not just main: ``inctrl score --device cuda:abc`` is one line."""
    done = subprocess.run(
        [sys.executable, "-m", "inctrl", *work.torch_score("--device", "cuda:abc")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: unknown device 'cuda:abc'")


@pytest.mark.cli
def test_pillows_warning_range_is_one_line_without_a_note(work: Work, monkeypatch) -> None:
    """Between Pillow's pixel limit and twice it, Pillow warns and our guard refuses: only the
    refusal is printed."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 250 * 270)
    outcome = run_main(MAINS["run"], *Work.score(replace(work, queries=[work.shots[1]])))
    outcome.assert_refused("image_1.png", "too many pixels")
    assert outcome.err.count("\n") == 1, outcome.err
