"""The tests' one fixtures module: seeded tiny models, seeded random images, checkpoint files in
our and the authors' layouts, the tiny bundle, and real command lines run in a subprocess.

No network, no files needed. Fixtures are used by name; the helpers are imported
(``from conftest import random_images``).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inctrl import InCTRL, Scores, get_config
from inctrl.checkpoint import is_head_key, ours_to_authors

TINY = get_config("tiny")
FULL = "ViT-B-16-plus-240"
CATEGORY = "candle"
BUNDLE_CATEGORIES = ("candle", "metal_nut")
# The authors' training code saves this around the state dict (pyslowfast-style checkpoint).
AUTHORS_CFG = "TRAIN:\n  BATCH_SIZE: 16\nSHOT: 2\n"
# (H, W): a square, a portrait and a landscape image, so preprocessing resizes and crops.
VARIED_SIZES = [(240, 240), (260, 300), (320, 250)]

Size = tuple[int, int]


# ---------------------------------------------------------------------------------- helpers
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


def snapshot(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (hidden ones too) -> sha256 of a file's bytes, or "folder":
    compare before and after to prove nothing was changed, added or left behind."""
    return {
        str(path.relative_to(folder)): (
            hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "folder"
        )
        for path in sorted(folder.rglob("*"))
    }


# --------------------------------------------------------------- the tiny model and bundle
@pytest.fixture(scope="session")
def tiny_model() -> InCTRL:
    """The tiny preset: its seeded backbone, perturbed heads."""
    return perturb_heads(InCTRL(TINY))


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    return random_images(8, seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model: InCTRL) -> Path:
    """The tiny model (seeded backbone, perturbed heads) saved as our checkpoint."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    tiny_model.save(path)
    return path


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint: Path) -> Path:
    """The tiny checkpoint exported (fp32) with its self-check; copy it before changing it."""
    from inctrl_export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(out, tiny_checkpoint, BUNDLE_CATEGORIES)
    return out


@pytest.fixture
def bundle(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny bundle, free to change."""
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


# ------------------------------------------------- a real Triton server (the serve extra)
TRITON_FPR = 0.1  # the served decisions' rate: candle's 12 calibration normals give a threshold


def png_bytes(image: np.ndarray) -> bytes:
    """An image array as a PNG file's bytes, what a Triton client sends."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class ServedBundle:
    """A bundle served by a real ``tritonserver`` on 127.0.0.1 (free ports): the ``bundle``
    folder it reads, the ``server`` (``inctrl_runtime.triton.server.TritonServer``) and the
    false-positive rate ``fpr`` of its decisions."""

    bundle: Path
    server: object
    fpr: float

    @property
    def http_url(self) -> str:
        return self.server.http_url  # http://127.0.0.1:PORT

    @property
    def grpc_url(self) -> str:
        return self.server.grpc_url  # grpc://127.0.0.1:PORT


def register_served(bundle: Path, categories=BUNDLE_CATEGORIES) -> None:
    """Register each category on 2 seeded shots; candle is also calibrated on 12 normals."""
    from inctrl_runtime.detector import Detector

    detector = Detector.open(bundle)
    for index, category in enumerate(categories):
        detector.register(category, random_images(2, seed=20 + index))
    if CATEGORY in categories:
        detector.calibrate(CATEGORY, random_images(12, seed=30))
    detector.close()


@contextlib.contextmanager
def serve_bundle(bundle: Path, repository: Path, fpr: float = TRITON_FPR):
    """Serve ``bundle`` (python-backend repository written at ``repository``: max batch 8, one
    thread per engine) until the block ends, stopping the server even if the block fails."""
    from inctrl_runtime.triton.repository import write_repository
    from inctrl_runtime.triton.server import TritonServer

    write_repository(bundle, repository, max_batch=8, fpr=fpr, threads=1)
    with TritonServer(repository) as server:
        yield ServedBundle(bundle, server, fpr)


def require_serving() -> None:
    """Skip, saying why, where the serve extra is missing (``serving_problem``)."""
    from inctrl_runtime.triton.server import serving_problem

    problem = serving_problem()
    if problem:
        pytest.skip(f"no Triton server in this environment: {problem}")


@pytest.fixture(scope="session")
def triton_server(tmp_path_factory, tiny_bundle: Path):
    """A ServedBundle: a copy of the tiny bundle with candle (calibrated: decisions at
    TRITON_FPR) and metal_nut registered (``register_served``), served for the whole session.
    Tests must not change its bundle (use ``serve_bundle`` on a copy for that)."""
    require_serving()
    folder = tmp_path_factory.mktemp("triton")
    bundle = Path(shutil.copytree(tiny_bundle, folder / "bundle"))
    register_served(bundle)
    with serve_bundle(bundle, folder / "repository") as served:
        yield served


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
    import json

    from inctrl_export.tensorrt import graph_profiles
    from inctrl_runtime.bundle import MANIFEST, Bundle
    from inctrl_runtime.engines.plans import (
        ENGINES_KEY,
        Build,
        ComputeCapability,
        PlanRecord,
        build_key,
        plan_file,
    )

    capability = ComputeCapability(*sm)
    key = build_key(precision, PLAN_TENSORRT, capability, version_compatible)
    shapes = graph_profiles(Bundle.open(bundle), batch, (1, 2, 8))["encoder"]
    digest = hashlib.sha256(PLAN_BYTES).hexdigest()
    plan = PlanRecord("encoder", plan_file("encoder", key), digest, len(PLAN_BYTES), 1.0, shapes)
    build = Build(key, precision, PLAN_TENSORRT, capability, version_compatible, False, batch,
                  (1, 2, 8), {"encoder": plan}, gpu="NVIDIA L4")  # fmt: skip
    (bundle / plan.file).parent.mkdir(exist_ok=True)
    (bundle / plan.file).write_bytes(PLAN_BYTES)
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest.setdefault(ENGINES_KEY, {})[key] = build.to_manifest()
    (bundle / MANIFEST).write_text(json.dumps(manifest))
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


@pytest.fixture(scope="session")
def exportable_bundle(tmp_path_factory, tiny_bundle: Path) -> Path:
    """A copy of the tiny bundle with candle registered and calibrated (metal_nut has a text
    prior only) and an encoder plan recorded (``record_plan``); copy it before changing it."""
    folder = Path(shutil.copytree(tiny_bundle, tmp_path_factory.mktemp("exportable") / "b"))
    record_plan(folder)
    register_served(folder, (CATEGORY,))
    return folder


# ------------------------------------------------------- checkpoints: every part perturbed
@pytest.fixture(scope="session")
def prompts_and_queries() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Two prompt images and three queries, of varied sizes."""
    return random_images(2, seed=1, size=VARIED_SIZES), random_images(3, seed=2, size=VARIED_SIZES)


@pytest.fixture(scope="session")
def tiny() -> InCTRL:
    """The tiny preset with a perturbed backbone as well as perturbed heads: a checkpoint that
    drops any part of it changes the scores."""
    return perturb_heads(perturb_backbone(InCTRL(TINY), seed=10), seed=11)


@pytest.fixture(scope="session")
def tiny_scores(tiny: InCTRL, prompts_and_queries) -> Scores:
    return scores_of(tiny, *prompts_and_queries)


@pytest.fixture(scope="session")
def authors_file(tmp_path_factory, tiny: InCTRL) -> Path:
    path = tmp_path_factory.mktemp("authors") / "inctrl_tiny.pyth"
    torch.save(authors_layout(tiny, "model_state"), path)
    return path


@pytest.fixture(scope="session", params=["pt", "safetensors"])
def clip_file(request, tmp_path_factory, tiny: InCTRL) -> Path:
    """The tiny model's (perturbed) backbone as an open_clip weights file."""
    path = tmp_path_factory.mktemp("clip") / f"tiny_clip.{request.param}"
    state = {k: v.contiguous() for k, v in tiny.clip.state_dict().items()}
    if request.param == "pt":
        torch.save(state, path)
    else:
        save_file(state, str(path))
    return path
