"""Data sets as lists of samples: MVTec-layout folders and the authors' JSON lists
(docs/model.md, "Data formats").

The MVTec layout (which folder is a category, its samples) is the runtime's
(``inctrl_runtime.datasets``), shared with the export and the bench; JSON lists hold
``{"image_path", "target", "type"}`` objects. numpy-free and torch-free: only paths and labels.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from inctrl_runtime.datasets import (
    ANOMALOUS,
    NORMAL,
    Sample,
    category_folders,
    scan_category,
)
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import category_file
from inctrl_runtime.files import write_json


def read_json_list(path: str | os.PathLike) -> list[Sample]:
    """Samples of one of the authors' JSON lists; relative image paths are relative to the file."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: not a readable JSON list ({err})") from None
    if not isinstance(entries, list):
        raise InputError(f"{path}: expected a JSON list of {{image_path, target, type}} objects")
    samples = []
    for index, entry in enumerate(entries):
        try:
            image = Path(entry["image_path"])
            target = int(entry["target"])
            category = str(entry["type"])
        except (TypeError, KeyError, ValueError):
            raise InputError(f"{path}: entry {index} lacks image_path, target or type") from None
        if target not in (NORMAL, ANOMALOUS):
            raise InputError(f"{path}: entry {index} has target {target}; use 0 or 1")
        if not image.is_absolute() and not image.exists():
            image = path.parent / image  # the authors' paths are relative to their cwd
        split = "train" if "train" in image.parts else "test"
        defect = image.parent.name if target == ANOMALOUS else "good"
        samples.append(Sample(str(image), target, category, split, defect))
    return samples


def load_samples(sources: Iterable[str | os.PathLike]) -> list[Sample]:
    """Samples from folders (data set roots or category folders) and JSON lists, in order."""
    samples: list[Sample] = []
    for source in sources:
        source = Path(source)
        if source.suffix.lower() == ".json":
            if not source.is_file():
                raise InputError(f"{source}: no such JSON file")
            samples.extend(read_json_list(source))
        else:
            for folder in category_folders(source):
                samples.extend(scan_category(folder))
    if not samples:
        raise InputError("no images found in " + ", ".join(str(s) for s in sources))
    return samples


def by_category(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    """Samples grouped by category, categories in first-seen order."""
    groups: dict[str, list[Sample]] = {}
    for sample in samples:
        groups.setdefault(sample.category, []).append(sample)
    return groups


def normal_pool(samples: Sequence[Sample], category: str, split: str = "train") -> list[Sample]:
    """Normal images of a category in one split: where few-shot prompts are drawn from."""
    return [
        s for s in samples if s.category == category and s.target == NORMAL and s.split == split
    ]


def _write_list(path: Path, samples: Sequence[Sample]) -> None:
    entries = [
        {"image_path": str(Path(s.image_path).resolve()), "target": s.target, "type": s.category}
        for s in samples
    ]
    write_json(path, entries)


def index_to_json(root: str | os.PathLike, out: str | os.PathLike) -> list[Path]:
    """Write the authors' JSON lists for every category of an MVTec-layout data set.

    Per category: ``<c>_val_normal.json`` (test/good) and ``<c>_val_outlier.json`` (test
    anomalies) for testing; ``<c>_normal.json`` (train/good and test/good) and
    ``<c>_outlier.json`` (test anomalies) for training on it as auxiliary data.
    """
    out = Path(out)
    written = []
    for folder in category_folders(root):
        samples = scan_category(folder)
        category = folder.name
        test_normal = [s for s in samples if s.split == "test" and s.target == NORMAL]
        outliers = [s for s in samples if s.target == ANOMALOUS]
        train_normal = [s for s in samples if s.split == "train"] + test_normal
        for suffix, chosen in (
            ("_val_normal.json", test_normal),
            ("_val_outlier.json", outliers),
            ("_normal.json", train_normal),
            ("_outlier.json", outliers),
        ):
            path = category_file(out, category, suffix)
            _write_list(path, chosen)
            written.append(path)
    return written
