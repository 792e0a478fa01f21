"""``inctrl-export verify``: a bundle's parity report with PyTorch, on demand, on real images.

Given a folder of images, k of them are the prompts, drawn for the category with a seed as
``inctrl evaluate`` draws them, and the rest the queries; given a category folder in MVTec
layout, the prompts are drawn so from ``train/good`` and the queries are the test images, whose
labels give AUROC on both sides (the accuracy control of an int8 export draws its prompts the
same way, with seed 0).
"""

from __future__ import annotations

import os
from pathlib import Path

from inctrl.loading import load_model, resolve_checkpoint
from inctrl_export.accuracy_control import labelled_category
from inctrl_export.bundle import CHECK_QUERIES, CHECK_SEED, CHECK_SHOTS, check_images
from inctrl_export.parity import ParityReport, compare, pass_mark
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.console import require_files
from inctrl_runtime.datasets import is_category_folder
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import choose_prompts, list_images, prompt_generator
from inctrl_runtime.files import file_sha256


def verify_bundle(
    bundle: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    images: str | os.PathLike | None = None,
    category: str | None = None,
    shots: int = CHECK_SHOTS,
    device: str = "cpu",
    atol: float | None = None,
    batch_size: int = 16,
    log=lambda message: None,
    seed: int = 0,
) -> ParityReport:
    """Compare a bundle with the checkpoint it was exported from (default: the demo, for a demo
    bundle), on ``images`` or, without them, on the export's seeded check images. ``seed``
    draws the prompts from a plain folder of images."""
    if shots < 1:
        raise InputError(f"--shots must be at least 1, got {shots}")
    if atol is not None:
        pass_mark(atol, "fp32")  # a bad mark is refused before any work
    detector = Detector.open(bundle, device=device)
    check_source_checkpoint(detector.bundle, checkpoint)
    category = category or _default_category(detector, images)
    detector.bundle.prior(category)  # an unknown category fails before the model loads
    prompts, queries, labels = _images(images, shots, seed, category)
    model = load_model(checkpoint, clip_weights, device=device, notice=log)
    precision = detector.bundle.graphs["encoder"].precision
    atol = pass_mark(atol, precision)
    return compare(model, detector, category, prompts, queries, atol, batch_size, labels)


def check_source_checkpoint(bundle: Bundle, checkpoint: str | os.PathLike | None) -> Path:
    """The checkpoint ``bundle`` was exported from: ``checkpoint`` (default, for a demo bundle:
    the embedded demo), refused in one line unless its sha256 is the manifest's source's."""
    source = bundle.source
    recorded = bundle.source_file or "no checkpoint file (a model in memory)"
    if checkpoint is None and not source.demo:
        raise InputError(
            f"{bundle.path}: exported from {recorded}; name that file with --checkpoint"
        )
    path, _ = resolve_checkpoint(checkpoint)
    require_files([path], "checkpoint")
    if file_sha256(path) != source.sha256:
        raise InputError(
            f"{path}: not the checkpoint {bundle.path} was exported from ({recorded}, sha256 "
            f"{str(source.sha256)[:12]}...); name the right --checkpoint"
        )
    return path


def _default_category(detector: Detector, images: str | os.PathLike | None) -> str:
    """The images folder's name when the bundle knows it, else the bundle's first category."""
    if images is not None and Path(images).name in detector.categories:
        return Path(images).name
    return detector.categories[0]


def _images(
    folder: str | os.PathLike | None, shots: int, seed: int, category: str
) -> tuple[list, list, list[int] | None]:
    """(prompts, queries, labels or None) from a folder, or the seeded check images."""
    if folder is None:
        images = check_images(shots + CHECK_QUERIES, CHECK_SEED)
        return images[:shots], images[shots:], None
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of images")
    if is_category_folder(folder):
        found = labelled_category(folder, shots, seed, category)
        return list(found.prompts), list(found.queries), list(found.labels)
    paths = list_images(folder)
    if len(paths) <= shots:
        raise InputError(
            f"{folder}: has {len(paths)} images; needs more than --shots {shots} ({shots} are "
            "drawn as the prompts, the rest are the queries)"
        )
    prompts = choose_prompts(paths, shots, prompt_generator(seed, category))
    return prompts, [p for p in paths if p not in prompts], None
