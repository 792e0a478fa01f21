"""The tests' fixtures: seeded tiny models, checkpoint files in our and the authors' layouts,
the tiny bundle and its copies, a real Triton server, counted image reads, the evaluation's
data and report, images for ``inctrl-run`` decisions, and hostile cases' workspaces. Plain
helpers are in ``helpers.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from inctrl import InCTRL, Scores, get_config
from inctrl.data import load_samples
from inctrl.evaluation import evaluate
from inctrl.synth import synthesize
from inctrl_runtime.detector import Detector

from helpers import (
    BUNDLE_CATEGORIES,
    CATEGORY,
    NORMALS,
    TINY,
    VARIED_SIZES,
    ImageReads,
    Work,
    authors_layout,
    perturb_backbone,
    perturb_heads,
    pngs,
    random_images,
    record_plan,
    register_served,
    require_serving,
    scores_of,
    serve_bundle,
)


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


# ---------------------------------------------------------------------- counted image reads
@pytest.fixture
def image_reads(monkeypatch) -> ImageReads:
    """Every image file Pillow opens and every image file it decodes while the test runs."""
    from PIL import Image, ImageFile

    reads = ImageReads()
    image_open, load = Image.open, ImageFile.ImageFile.load

    def counting_open(fp, *args, **kwargs):
        reads.opened.append(str(fp))
        return image_open(fp, *args, **kwargs)

    def counting_load(image):
        if image.tile:  # pixels still to decode from the file (none once loaded)
            reads.decoded += 1
        return load(image)

    monkeypatch.setattr(Image, "open", counting_open)
    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return reads


# ------------------------------------------ inctrl evaluate: synthetic data and its report
@pytest.fixture(scope="session")
def eval_dir(tmp_path_factory) -> Path:
    """Synthetic MVTec-layout data (2 categories, 6 train/good images each), a tiny checkpoint."""
    root = tmp_path_factory.mktemp("evaluation")
    synthesize(root / "synth", 0, categories=2, images_per_category=6, size=64)
    perturb_heads(InCTRL(get_config("tiny"))).save(root / "tiny.safetensors")
    return root


@pytest.fixture(scope="session")
def model(eval_dir) -> InCTRL:
    return InCTRL.from_checkpoint(eval_dir / "tiny.safetensors")


@pytest.fixture(scope="session")
def samples(eval_dir):
    return load_samples([eval_dir / "synth"])


@pytest.fixture(scope="session")
def report(model, samples):
    return evaluate(model, samples, shots=2, seeds=(0, 1, 2), checkpoint_name="tiny")


# ---------------------------------------------- inctrl-run decisions: images of each kind
@pytest.fixture(scope="session")
def inputs(tmp_path_factory) -> dict[str, list[Path]]:
    """Prompt, calibration and query PNGs, each kind in its own folder."""
    root = tmp_path_factory.mktemp("decisions")
    return {
        "shots": pngs(root / "shots", 2, seed=1, prefix="shot"),
        "normals": pngs(root / "normals", NORMALS, seed=2, prefix="good"),
        "queries": pngs(root / "queries", 6, seed=3, prefix="query"),
    }


# -------------------------------------------- hostile input: a workspace for each case
@pytest.fixture(scope="session")
def template(tmp_path_factory, tiny_bundle: Path) -> tuple[Path, list[Path], list[Path]]:
    """The tiny bundle with candle registered, and the image files."""
    root = tmp_path_factory.mktemp("hostile")
    files = []
    for i, array in enumerate(random_images(4, seed=70, size=[(250, 270), (240, 300)])):
        files.append(root / f"image_{i}.png")
        Image.fromarray(array).save(files[-1])
    bundle = Path(shutil.copytree(tiny_bundle, root / "bundle"))
    Detector.open(bundle).register("candle", files[:2])
    return bundle, files[:2], files[2:]


@pytest.fixture
def work(template, tmp_path: Path, tiny_checkpoint: Path) -> Work:
    bundle, shots, queries = template
    folder = tmp_path / "work"
    folder.mkdir()
    return Work(Path(shutil.copytree(bundle, tmp_path / "bundle")), folder, shots, queries,
                tiny_checkpoint)  # fmt: skip
