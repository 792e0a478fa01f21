"""The tests' one helpers module: seeded images and data, perturbed tiny models, command lines
run in this process or a subprocess, bundles edited and forged, counted image reads, the
evaluation's synthetic data, a calibrated category for ``inctrl-run``, a hostile case's
workspace, a real Triton server on a bundle, and made-up TensorRT plan records. Fixtures are in
``conftest.py``; tests import these (``from helpers import random_images``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import inctrl_runtime.cli
from inctrl import InCTRL, Scores, get_config
from inctrl.checkpoint import is_head_key, ours_to_authors
from inctrl_runtime.detector import Detector

TINY = get_config("tiny")
FULL = "ViT-B-16-plus-240"
CATEGORY = "candle"
BUNDLE_CATEGORIES = ("candle", "metal_nut")

# The authors' training code saves this around the state dict (pyslowfast-style checkpoint).
AUTHORS_CFG = "TRAIN:\n  BATCH_SIZE: 16\nSHOT: 2\n"

# (H, W): a square, a portrait and a landscape image, so preprocessing resizes and crops.
VARIED_SIZES = [(240, 240), (260, 300), (320, 250)]
Size = tuple[int, int]


def random_images(
    count: int, seed: int = 0, size: Size | list[Size] = (260, 300), channels: int = 3
) -> list[np.ndarray]:
    """``count`` seeded uint8 images, H x W x ``channels``, of ``size`` (H, W), or of the sizes
    of a list taken in turn."""
    sizes = size if isinstance(size, list) else [size]
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (*sizes[i % len(sizes)], channels), dtype=np.uint8)
        for i in range(count)
    ]


def synth_data(tmp_path_factory, **options) -> Path:
    """A synthetic MVTec-layout data set (``inctrl.synth.synthesize`` with ``options``)."""
    from inctrl.synth import synthesize

    root = tmp_path_factory.mktemp("data") / "synth"
    synthesize(root, **options)
    return root


@torch.no_grad()
def perturb_heads(model: InCTRL, seed: int = 1) -> InCTRL:
    """Give the adapter and heads seeded non-default weights and batch-norm statistics (their
    batch counts too), so that a test fails if they are not loaded or not used."""
    generator = torch.Generator().manual_seed(seed)
    for key, tensor in model.state_dict().items():
        if not is_head_key(key):
            continue
        if not tensor.is_floating_point():  # num_batches_tracked
            tensor.fill_(100 + seed)
        elif key.endswith("running_var"):
            tensor.copy_(0.5 + torch.rand(tensor.shape, generator=generator))
        else:
            tensor.copy_((torch.rand(tensor.shape, generator=generator) - 0.5) * 0.4)
    return model


@torch.no_grad()
def perturb_backbone(model: InCTRL, seed: int) -> InCTRL:
    """Move every CLIP weight off the seeded backbone, so a checkpoint must carry it."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.clip.parameters():
        param.add_(0.02 * torch.randn(param.shape, generator=generator))
    return model


def scores_of(
    model: InCTRL, prompts: list[np.ndarray], queries: list[np.ndarray], category: str = CATEGORY
) -> Scores:
    return model.score(queries, model.reference(prompts), model.text_prior(category))


def assert_same_scores(got: Scores, want: Scores) -> None:
    for name, a, b in zip(Scores._fields, got, want, strict=True):
        assert a.shape == b.shape, name
        assert (a - b).abs().max().item() <= 1e-7, f"{name}: {a} != {b}"


def assert_same_state(got: InCTRL, want: InCTRL, unused: frozenset[str] = frozenset()) -> None:
    """Equal tensors under every key, except ``unused`` ones a checkpoint need not hold."""
    got_state, want_state = got.state_dict(), want.state_dict()
    assert got_state.keys() == want_state.keys()
    for key, value in want_state.items():
        if key not in unused:
            assert torch.equal(got_state[key], value), key


def authors_layout(model: InCTRL, wrap: str) -> object:
    """What the authors' training code would have saved for ``model``."""
    state = ours_to_authors(model.state_dict())
    if wrap == "ddp":
        return {"epoch": 9, "model_state": {f"module.{k}": v for k, v in state.items()}}
    if wrap == "model_state":
        return {"epoch": 9, "model_state": state, "cfg": AUTHORS_CFG}
    return state


def run_command(module: str, *args: str, cwd=None, timeout: float = 300):
    """Run a real command line (the ``main`` of ``module``, e.g. ``inctrl_runtime.cli``) in a
    subprocess, as a user would, and capture it."""
    code = f"import sys; from {module} import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def run_inctrl(*args: str, cwd=None, timeout: float = 300):
    """Run the real `inctrl` command line in a subprocess and capture it."""
    return run_command("inctrl.cli", *args, cwd=cwd, timeout=timeout)


@dataclass(frozen=True)
class Outcome:
    """What a command line did: exit code and both streams."""

    code: int
    out: str
    err: str

    def assert_refused(self, *phrases: str) -> None:
        """Exit 2, one line on stderr (``error: ...``, after any ``note:`` lines), no traceback,
        and each phrase in that line."""
        lines = [line for line in self.err.splitlines() if not line.startswith("note: ")]
        assert self.code == 2, (self.code, self.err)
        assert "Traceback" not in self.err, self.err
        assert len(lines) == 1 and lines[0].startswith("error: "), self.err
        for phrase in phrases:
            assert phrase in lines[0], (phrase, lines[0])


def program_mains() -> dict[str, Callable[[list[str]], None]]:
    """Each command-line program's ``main``, by the program's name."""
    modules = {"inctrl": "inctrl.cli", "inctrl-export": "inctrl_export.cli",
               "inctrl-run": "inctrl_runtime.cli", "inctrl-bench": "inctrl_bench.cli"}  # fmt: skip
    return {name: importlib.import_module(module).main for name, module in modules.items()}


def run_main(main: Callable[[list[str]], None], *args: str) -> Outcome:
    """Run a command line's ``main`` (e.g. ``inctrl_runtime.cli.main``) in this process with
    captured streams: the same code path as the installed command, without a subprocess."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return Outcome(code, out.getvalue(), err.getvalue())


@dataclass
class ImageReads:
    """What Pillow read while a test ran (the ``image_reads`` fixture): each file it opened, as
    given, and how many images it decoded."""

    opened: list[str] = field(default_factory=list)
    decoded: int = 0

    @property
    def names(self) -> list[str]:
        """The opened files' names, sorted."""
        return sorted(Path(file).name for file in self.opened)


def edit_manifest(bundle: Path, change: Callable[[dict], None]) -> None:
    """Change a bundle's manifest in place (``change`` edits the parsed JSON)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def forge(bundle: Path, name: str, write: Callable[[Path], None]) -> None:
    """Change a bundle file (``write`` writes it) and record its new size and sha256 in the
    manifest, as a careful forger would."""
    from inctrl_runtime.files import file_sha256

    path = bundle / name
    write(path)
    record = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
    edit_manifest(bundle, lambda m: m["files"][name].update(record))


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) -> sha256 of a file's bytes, or "folder":
    compare before and after to prove nothing was changed, added or left behind."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


# --------------------------------------------- inctrl evaluate: the eval_dir fixture's data
CATEGORIES = ["synth_fabric", "synth_washer"]
TEST_IMAGES = 8  # per category: 3 test/good and one of each of the 5 defects
POOL_IMAGES = 6  # per category: train/good


# ----------------------------------------- inctrl-run decisions: candle registered, calibrated
NORMALS = 24  # thresholds at 0.05 (needs 19) and 0.1 (needs 9), none at 0.01 (needs 99)


def pngs(folder: Path, count: int, seed: int, prefix: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, array in enumerate(random_images(count, seed=seed)):
        paths.append(folder / f"{prefix}{i:02d}.png")
        Image.fromarray(array).save(paths[-1])
    return paths


def inctrl_run(*args) -> Outcome:
    """``inctrl-run``'s ``main``, in process (``run_inctrl``: ``inctrl``, in a subprocess)."""
    return run_main(inctrl_runtime.cli.main, *args)


def bank_file(bundle: Path, category: str = CATEGORY) -> Path:
    return bundle / "references" / f"{category}.npz"


def registered(bundle: Path, inputs: dict) -> Path:
    """The bundle with candle registered on the two shots (Python API)."""
    Detector.open(bundle).register(CATEGORY, inputs["shots"])
    return bundle


def calibrated(bundle: Path, inputs: dict, count: int = NORMALS) -> Path:
    """The bundle with candle registered and calibrated on ``count`` normals (Python API)."""
    detector = Detector.open(registered(bundle, inputs))
    detector.calibrate(CATEGORY, inputs["normals"][:count])
    return bundle


def order_statistic(calibration: np.ndarray, alpha: float) -> float | None:
    """The decision threshold worked out by hand: the ceil((n + 1)(1 - alpha))-th smallest
    calibration score, plus the tie tolerance."""
    from inctrl_runtime.decisions import TIE_TOLERANCE

    rank = math.ceil((len(calibration) + 1) * (1 - alpha))
    return float(calibration[rank - 1]) + TIE_TOLERANCE if rank <= len(calibration) else None


# ----------------------------------------------------- hostile input: one case's workspace
@dataclass(frozen=True)
class Work:
    """One case's workspace: a registered bundle (candle), images, a checkpoint, a folder."""

    bundle: Path
    folder: Path
    shots: list[Path]
    queries: list[Path]
    checkpoint: Path

    @property
    def bank(self) -> Path:
        return bank_file(self.bundle)

    def score(self, *extra: str) -> list[str]:
        """``inctrl-run score`` of the queries against the registered candle bank."""
        return ["score", str(self.bundle), "--category", "candle", *extra, *map(str, self.queries)]

    def torch_score(self, *extra: str) -> list[str]:
        """``inctrl score`` of the queries with the tiny checkpoint (the shots, unless ``--bank``
        is among ``extra``)."""
        shots = [] if "--bank" in extra else [f"--shot={p}" for p in self.shots]
        return ["score", "-c", str(self.checkpoint), "--category", "candle", *shots, *extra,
                *map(str, self.queries)]  # fmt: skip


# ------------------------------------------------- a real Triton server (the serve extra)
TRITON_FPR = 0.1  # the served decisions' rate: candle's 12 calibration normals give a threshold


def png_bytes(image: np.ndarray) -> bytes:
    """An image array as a PNG file's bytes, what a Triton client sends."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ServedBundle:
    """A bundle served by a real ``tritonserver`` on 127.0.0.1 (free ports): the ``bundle``
    folder it reads, the ``server`` (``inctrl_runtime.triton.server.TritonServer``), the
    false-positive rate ``fpr`` of its decisions, and its ``http://`` and ``grpc://`` URLs."""

    bundle: Path
    server: object
    fpr: float
    http_url: str
    grpc_url: str


def register_served(bundle: Path, categories=BUNDLE_CATEGORIES, calibrated=(CATEGORY,)) -> None:
    """Register each category on 2 seeded shots; those also ``calibrated`` (candle, by default)
    are calibrated on 12 normals."""
    detector = Detector.open(bundle)
    for index, category in enumerate(categories):
        detector.register(category, random_images(2, seed=20 + index))
    for category in [c for c in categories if c in calibrated]:
        detector.calibrate(category, random_images(12, seed=30))
    detector.close()


@contextlib.contextmanager
def serve_bundle(
    bundle: Path, repository: Path, fpr: float = TRITON_FPR, region_fpr: float | None = None
):
    """Serve ``bundle`` (python-backend repository written at ``repository``: max batch 8, one
    thread per engine; regions at ``region_fpr``, None: ``fpr``) until the block ends, stopping
    the server even if the block fails."""
    from inctrl_runtime.triton.repository import write_repository
    from inctrl_runtime.triton.server import TritonServer

    write_repository(bundle, repository, max_batch=8, fpr=fpr, region_fpr=region_fpr, threads=1)
    with TritonServer(repository) as server:
        yield ServedBundle(bundle, server, fpr, server.http_url, server.grpc_url)


def assert_same_regions(got: list[dict] | None, want: list[dict] | None) -> None:
    """The same regions (or both None), in order: each box within one pixel, each area within
    one pixel and every other number within 1e-4 (a batch wobble of the patch map, 1e-7, can
    move a pixel across the region threshold)."""
    if want is None or got is None:
        assert got == want
        return
    assert len(got) == len(want), (got, want)
    for ours, theirs in zip(got, want, strict=True):
        assert list(ours) == list(theirs)
        assert np.abs(np.subtract(ours["box"], theirs["box"])).max() <= 1, (ours, theirs)
        assert abs(ours["area"] - theirs["area"]) <= 1, (ours, theirs)
        for key in set(theirs) - {"box", "area"}:
            assert abs(ours[key] - theirs[key]) <= 1e-4, (key, ours, theirs)


def assert_same_records(got: list[dict], want: list[dict], atol: float = 1e-5) -> None:
    """Equal records (a served one and the runtime's, say): the same keys in order, image
    names, decisions and frame sizes; numbers within ``atol``; regions as
    ``assert_same_regions`` says."""
    assert len(got) == len(want)
    for ours, theirs in zip(got, want, strict=True):
        assert list(ours) == list(theirs)
        for key, value in theirs.items():
            if isinstance(value, float):
                assert abs(ours[key] - value) <= atol, (key, ours[key], value)
            elif key == "patch_residual_map":
                assert np.abs(np.subtract(ours[key], value)).max() <= atol, key
            elif key == "regions":
                assert_same_regions(ours[key], value)
            else:
                assert ours[key] == value, (key, ours[key], value)


def require_serving() -> None:
    """Skip, saying why, where the serve extra is missing (``serving_problem``)."""
    from inctrl_runtime.triton.server import serving_problem

    problem = serving_problem()
    if problem:
        pytest.skip(f"no Triton server in this environment: {problem}")


# ------------------------------------------- inctrl-export triton: plan records, configs
PLAN_TENSORRT = "11.4.0.106"

# Not a TensorRT plan: bytes inctrl-export triton checks (size, sha256) and copies, which is all
# it does with a plan (it never deserializes one), so tests of it can write them.
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
    from inctrl_export.tensorrt import graph_profiles
    from inctrl_runtime.bundle import Bundle
    from inctrl_runtime.engines.tensorrt.cuda import ComputeCapability
    from inctrl_runtime.engines.tensorrt.plans import Build, PlanRecord, build_key, plan_file
    from inctrl_runtime.manifest import record_build

    capability = ComputeCapability(*sm)
    key = build_key(precision, PLAN_TENSORRT, capability, version_compatible)
    shapes = graph_profiles(Bundle.open(bundle), batch, (1, 2, 8))["encoder"]
    digest = hashlib.sha256(PLAN_BYTES).hexdigest()
    plan = PlanRecord("encoder", plan_file("encoder", key), digest, len(PLAN_BYTES), 1.0, shapes)
    build = Build(key, precision, PLAN_TENSORRT, capability, version_compatible, False, batch,
                  (1, 2, 8), {"encoder": plan}, gpu="NVIDIA L4")  # fmt: skip
    (bundle / plan.file).parent.mkdir(exist_ok=True)
    (bundle / plan.file).write_bytes(PLAN_BYTES)
    record_build(bundle, key, build.to_manifest())
    return key


def read_triton_configs(repository: Path) -> dict:
    """Every model folder's config.pbtxt of a Triton repository, parsed by Triton's own
    protobuf definitions (``ModelConfig`` of tritonclient), by folder name."""
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    return {
        folder.name: text_format.Parse((folder / "config.pbtxt").read_text(), ModelConfig())
        for folder in sorted(p for p in repository.iterdir() if p.is_dir())
    }
