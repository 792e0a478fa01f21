"""``inctrl-bench --eval DATA``: each row's image AUROC on labelled MVTec-layout data and its
final-score drift against torch-fp32 on the same queries (torch-free: AUROC in numpy)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inctrl_bench.machine import Progress
from inctrl_runtime.datasets import NORMAL, category_folders, scan_category
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import check_category_name

if TYPE_CHECKING:
    from inctrl_bench.measure import Prepare

# The row whose scores every other row's drift is measured against.
REFERENCE = "torch-fp32"
LAYOUT = (
    "give labelled MVTec-layout data: a category folder (train/good/*.png, test/good/*.png, "
    "test/<defect>/*.png) or a folder of them"
)


@dataclass(frozen=True)
class EvalCategory:
    """One category of the eval data: its train/good images (the first k are the prompts) and
    its test images (the queries) with their labels (1: anomalous)."""

    name: str
    normals: tuple[str, ...]
    queries: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class EvalData:
    """Labelled MVTec-layout data (one category folder, or a root of several) and the k prompts
    each category's queries are scored with."""

    path: Path
    shots: int
    categories: tuple[EvalCategory, ...]

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def images(self) -> int:
        """The number of queries (test images) over all categories."""
        return sum(len(c.queries) for c in self.categories)

    @property
    def anomalous(self) -> int:
        return sum(sum(c.labels) for c in self.categories)

    def normal_images(self) -> list[str]:
        """Every category's train/good images (the int8 export's calibration images)."""
        return [path for category in self.categories for path in category.normals]

    def to_dict(self) -> dict:
        """The JSON record: the data, its size, k and each category's prompts."""
        categories = {
            c.name: {
                "prompts": list(c.normals[: self.shots]),
                "images": len(c.queries),
                "anomalous": sum(c.labels),
            }
            for c in self.categories
        }
        return {
            "name": self.name,
            "path": str(self.path),
            "images": self.images,
            "anomalous": self.anomalous,
            "shots": self.shots,
            "categories": categories,
        }


def describe_data(record: dict) -> str:
    """One line of ``EvalData.to_dict``'s record: the data's name, size and the prompts."""
    categories = len(record["categories"])
    return (
        f"{record['name']} ({record['path']}): {record['images']} test images "
        f"({record['anomalous']} anomalous) in {categories} categor"
        f"{'y' if categories == 1 else 'ies'}; k={record['shots']} prompts each, the first of "
        "its train/good"
    )


def load_eval_data(path: str | Path, shots: int) -> EvalData:
    """The labelled categories of ``path`` (a category folder, else every category folder in
    it); refused in one line unless each has ``shots`` train/good images and test images of
    both labels."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"--eval {path}: no such folder; {LAYOUT}")
    try:
        folders = category_folders(path)
    except InputError:
        raise InputError(f"--eval {path}: no MVTec-layout category in it; {LAYOUT}") from None
    categories = []
    for folder in folders:
        try:
            check_category_name(folder.name)  # it names the category's text prior
        except InputError as err:
            raise InputError(f"--eval {folder}: {err}") from None
        samples = scan_category(folder)
        normals = [s.image_path for s in samples if s.split == "train"]
        test = [s for s in samples if s.split == "test"]
        labels = [s.target for s in test]
        normal, anomalous = labels.count(NORMAL), len(labels) - labels.count(NORMAL)
        if len(normals) < shots or not normal or not anomalous:
            raise InputError(
                f"--eval {folder}: needs at least {shots} train/good images (k, the smallest "
                "--shots) and both normal (test/good) and anomalous (test/<defect>) test images; "
                f"found {len(normals)} train/good, {normal} normal and {anomalous} anomalous"
            )
        queries = tuple(s.image_path for s in test)
        categories.append(EvalCategory(folder.name, tuple(normals), queries, tuple(labels)))
    return EvalData(path, shots, tuple(categories))


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Image AUROC (the Mann-Whitney statistic, ties counted half), as scikit-learn's
    ``roc_auc_score`` gives it; labels 1 = anomalous, both present."""
    labels = np.asarray(labels, dtype=bool)
    _, inverse, counts = np.unique(
        np.asarray(scores, np.float64), return_inverse=True, return_counts=True
    )
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse.reshape(-1)]  # tied scores: their mean rank
    positive = int(labels.sum())
    negative = labels.size - positive
    return float((ranks[labels].sum() - positive * (positive + 1) / 2) / (positive * negative))


def eval_scores(
    prepare: Prepare, data: EvalData, batch: int, name: str, progress: Progress
) -> dict[str, np.ndarray]:
    """Each category's final scores of its queries, with its first k train/good images as the
    prompts, in batches of ``batch`` (the subject's largest where smaller)."""
    scores = {}
    for category in data.categories:
        progress.step(f"{name}: scoring {len(category.queries)} {category.name} test images")
        subject = prepare(list(category.normals[: data.shots]), category.name)
        for step in subject.before.values():  # the authors' way: prompts and prior redone
            step()
        size = min(batch, subject.max_batch or batch)
        queries = category.queries
        chunks = [
            subject.final_scores(
                subject.head(subject.encode(subject.pixels(queries[i : i + size])))
            )
            for i in range(0, len(queries), size)
        ]
        scores[category.name] = np.concatenate(chunks).astype(np.float64)
    return scores


@dataclass
class Accuracy:
    """One row's accuracy on the eval data: image AUROC per category and their mean, and the
    final score's drift against torch-fp32 on the same queries (None: ``drift_reason``)."""

    data: str
    path: str
    images: int
    shots: int
    precision: str
    auroc: dict[str, float]
    mean_auroc: float
    drift_max_abs: float | None = None
    drift_mean_abs: float | None = None
    drift_reference: str | None = None
    drift_reason: str | None = None
    scores: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, data: EvalData, precision: str, scores: dict[str, np.ndarray]) -> Accuracy:
        """The AUROC of ``scores`` (each category's, in query order) on ``data``."""
        per_category = {c.name: auroc(c.labels, scores[c.name]) for c in data.categories}
        mean = float(np.mean(list(per_category.values())))
        where = (data.name, str(data.path), data.images, data.shots)
        return cls(*where, precision, per_category, mean, scores=scores)

    def add_drift(self, reference: dict[str, np.ndarray], label: str) -> None:
        """The absolute differences of the final scores from ``reference``'s on each query."""
        differences = np.concatenate([np.abs(self.scores[c] - reference[c]) for c in self.auroc])
        self.drift_max_abs = float(differences.max())
        self.drift_mean_abs = float(differences.mean())
        self.drift_reference = label

    def to_dict(self) -> dict:
        """The JSON record (the per-query scores stay out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scores"}
