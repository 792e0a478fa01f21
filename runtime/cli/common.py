"""What the ``inctrl-run`` commands share: the app, the options several declare, opening a
bundle's detector, and the images a list of files and folders names."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from inctrl_runtime.console import new_app, require_files, status, warn
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import IMAGE_SUFFIXES, list_images

if TYPE_CHECKING:
    from inctrl_runtime.detector import Detector

app = new_app(
    "inctrl-run",
    "Score images with an exported InCTRL bundle (onnxruntime; no torch).",
)

BundleArgument = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx).")
CategoryOption = typer.Option(
    None,
    "--category",
    help="Product category; the bundle must hold its text prior.",
    show_default=False,
)
DeviceOption = typer.Option("cpu", "--device", help="cpu or (cuda|tensorrt|ort-tensorrt)[:N].")
ThreadsOption = typer.Option(
    None, "--threads", help="Intra-op threads (default: all cores).", show_default=False
)
QueryPaths = Annotated[
    list[Path] | None,
    typer.Argument(
        help="Query images (png, jpg, ..., npy), or folders: their images, sorted by name.",
        show_default=False,
    ),
]


def open_detector(bundle: Path, device: str = "cpu", threads: int | None = None) -> Detector:
    """The bundle's detector, a spinner while it opens, and a note when it holds the demo."""
    from inctrl_runtime.detector import Detector

    with status("opening the bundle"):
        detector = Detector.open(bundle, device=device, threads=threads)
    if detector.bundle.is_demo:
        warn("this bundle holds the embedded DEMO model (synthetic data only, not for inspection)")
    return detector


def images_of(paths: Sequence[Path], what: str) -> list[Path]:
    """The image files given, each folder among them replaced by its images, sorted by name
    (``list_images``); a missing file or a folder without images is a one-line error."""
    images: list[Path] = []
    for path in paths:
        if not path.is_dir():
            require_files([path], what)
            images.append(path)
        elif found := list_images(path):
            images.extend(found)
        else:
            raise InputError(
                f"{path}: a folder without {what}s (it takes {', '.join(IMAGE_SUFFIXES)} files); "
                "name a folder that holds them"
            )
    return images
