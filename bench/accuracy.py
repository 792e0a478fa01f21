"""``inctrl-bench --eval DATA``: each row's image AUROC on labelled MVTec-layout data, where the
data has masks its pixel AUROC, AUPRO and the regions at calibrated region thresholds, and its
final-score drift against torch-fp32 on the same queries.

Torch-free: the pixel metrics are the runtime's (``inctrl_runtime.pixel_metrics``), those of
``inctrl evaluate``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from inctrl_bench.machine import Progress
from inctrl_runtime.datasets import NORMAL, category_folders, scan_category
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import check_category_name
from inctrl_runtime.pixel_metrics import AUPRO_LIMIT, PixelLabels, pair_auroc, region_point

if TYPE_CHECKING:
    from inctrl_bench.measure import Prepare, Subject

# The row whose scores every other row's drift is measured against.
REFERENCE = "torch-fp32"
# The target false-positive rates of the region thresholds (calibrated on train/good less k).
REGION_FPRS = (0.05, 0.1)
LAYOUT = (
    "give labelled MVTec-layout data: a category folder (train/good/*.png, test/good/*.png, "
    "test/<defect>/*.png) or a folder of them"
)


@dataclass(frozen=True)
class EvalCategory:
    """One category of the eval data: its train/good images (the first k are the prompts, the
    others calibrate the region thresholds) and its test images (the queries) with their labels
    (1: anomalous) and ground-truth masks (None: a normal image, or no mask)."""

    name: str
    normals: tuple[str, ...]
    queries: tuple[str, ...]
    labels: tuple[int, ...]
    masks: tuple[str | None, ...]

    @property
    def has_masks(self) -> bool:
        return any(mask is not None for mask in self.masks)


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
        """The JSON record: the data, its size, k and each category's prompts and masks."""
        categories = {
            c.name: {
                "prompts": list(c.normals[: self.shots]),
                "images": len(c.queries),
                "anomalous": sum(c.labels),
                "masks": sum(mask is not None for mask in c.masks),
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
        masks = tuple(s.mask_path for s in test)
        categories.append(EvalCategory(folder.name, tuple(normals), queries, tuple(labels), masks))
    return EvalData(path, shots, tuple(categories))


def auroc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Image AUROC (the Mann-Whitney statistic, ties counted half), as scikit-learn's
    ``roc_auc_score`` gives it; labels 1 = anomalous, both present."""
    labels = np.asarray(labels, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    return pair_auroc(np.sort(scores[~labels]), scores[labels])


def host_array(values: Any) -> np.ndarray:
    """A head output as a float32 numpy array of its own: the runtime's are numpy (an engine's
    buffers, maybe), the torch rows' tensors (on the GPU, in fp16 too), brought to the host
    without importing torch here."""
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().float().cpu().numpy()
    return np.array(values, dtype=np.float32)


@dataclass(frozen=True)
class EvalOutputs:
    """One row's outputs on one category: its queries' final scores (float64) and patch maps
    (queries x P), the map maxima (``max_patch_residual``, ascending) of the train/good images
    that are not its prompts, and the model's view size S."""

    scores: np.ndarray
    maps: np.ndarray
    map_maxima: np.ndarray
    size: int


def _head_outputs(
    subject: Subject, images: Sequence[str], batch: int
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per batch of ``images``: the final scores, patch maps and map maxima (host copies)."""
    for start in range(0, len(images), batch):
        out = subject.head(subject.encode(subject.pixels(images[start : start + batch])))
        yield (
            subject.final_scores(out).astype(np.float64),
            host_array(out.patch_residual_map),
            host_array(out.max_patch_residual),
        )


def eval_scores(
    prepare: Prepare, data: EvalData, batch: int, name: str, progress: Progress
) -> dict[str, EvalOutputs]:
    """Each category's outputs (``EvalOutputs``): its queries scored with its first k
    train/good images as the prompts, then its other train/good images for the map maxima, in
    batches of ``batch`` (the subject's largest where smaller)."""
    outputs = {}
    for category in data.categories:
        calibration = category.normals[data.shots :]
        progress.step(
            f"{name}: scoring {len(category.queries)} {category.name} test images and "
            f"{len(calibration)} train/good images (region calibration)"
        )
        subject = prepare(list(category.normals[: data.shots]), category.name)
        for step in subject.before.values():  # the authors' way: prompts and prior redone
            step()
        size = min(batch, subject.max_batch or batch)
        scores, maps, _ = zip(*_head_outputs(subject, category.queries, size), strict=True)
        maxima = [chunk[2] for chunk in _head_outputs(subject, calibration, size)]
        outputs[category.name] = EvalOutputs(
            np.concatenate(scores),
            np.concatenate(maps),
            np.sort(np.concatenate(maxima or [np.zeros(0, dtype=np.float32)])),
            subject.shape.image_size,
        )
    return outputs


class CategoryPixels(NamedTuple):
    """A category's pixel AUROC and AUPRO (None: no masks), and its ``RegionPoint`` records at
    ``REGION_FPRS``."""

    pixel_auroc: float | None
    aupro: float | None
    regions: list[dict]

    @classmethod
    def of(cls, category: EvalCategory, outputs: EvalOutputs) -> CategoryPixels:
        """From a row's outputs; the pixel values, as large as the test images' frames, live
        only while this runs."""
        labels = PixelLabels.of(category.queries, category.labels, category.masks, outputs.size)
        pixels = None if labels is None else labels.values(outputs.maps)
        points = [region_point(outputs.map_maxima, pixels, alpha) for alpha in REGION_FPRS]
        records = [point._asdict() for point in points]
        if pixels is None:
            return cls(None, None, records)
        return cls(pixels.auroc(), pixels.aupro(), records)


def _mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None if all are."""
    known = [value for value in values if value is not None]
    return float(np.mean(known)) if known else None


@dataclass
class Accuracy:
    """One row's accuracy on the eval data: image AUROC per category and their mean; where the
    data has masks, pixel AUROC and AUPRO (``inctrl_runtime.pixel_metrics``, in each test image's
    frame) per category and their means over the categories with masks (None, and
    ``pixel_reason``, for those without); per category the region threshold at each of
    ``REGION_FPRS`` from the map maxima of its ``calibration`` images (train/good less the k
    prompts) and at it the region recall and good-part region-flag rate (``RegionPoint``);
    and the final score's drift against torch-fp32 on the same queries (None:
    ``drift_reason``)."""

    data: str
    path: str
    images: int
    shots: int
    precision: str
    auroc: dict[str, float]
    mean_auroc: float
    pixel_auroc: dict[str, float | None]
    mean_pixel_auroc: float | None
    aupro: dict[str, float | None]
    mean_aupro: float | None
    aupro_limit: float
    calibration: dict[str, int]
    regions: dict[str, list[dict]]
    pixel_reason: str | None
    drift_max_abs: float | None = None
    drift_mean_abs: float | None = None
    drift_reference: str | None = None
    drift_reason: str | None = None
    scores: dict[str, EvalOutputs] = field(default_factory=dict, repr=False)  # eval_scores'

    @classmethod
    def of(cls, data: EvalData, precision: str, outputs: dict[str, EvalOutputs]) -> Accuracy:
        """The metrics of ``outputs`` (``eval_scores``) on ``data``; the pixel values of one
        category at a time."""
        per_category = {c.name: auroc(c.labels, outputs[c.name].scores) for c in data.categories}
        pixels = {c.name: CategoryPixels.of(c, outputs[c.name]) for c in data.categories}
        pixel = {name: values.pixel_auroc for name, values in pixels.items()}
        aupro = {name: values.aupro for name, values in pixels.items()}
        unmasked = [c.name for c in data.categories if not c.has_masks]
        return cls(
            data=data.name,
            path=str(data.path),
            images=data.images,
            shots=data.shots,
            precision=precision,
            auroc=per_category,
            mean_auroc=float(np.mean(list(per_category.values()))),
            pixel_auroc=pixel,
            mean_pixel_auroc=_mean(pixel.values()),
            aupro=aupro,
            mean_aupro=_mean(aupro.values()),
            aupro_limit=AUPRO_LIMIT,
            calibration={name: len(out.map_maxima) for name, out in outputs.items()},
            regions={name: values.regions for name, values in pixels.items()},
            pixel_reason=(
                f"no ground-truth masks (ground_truth/<defect>/<name>_mask.png) in "
                f"{', '.join(unmasked)}: no pixel metrics there"
                if unmasked
                else None
            ),
            scores=outputs,
        )

    def region_means(self, index: int) -> tuple[float | None, float | None]:
        """At ``REGION_FPRS[index]``: the region recall and region-flag rate, each the mean
        over the categories that have one."""
        points = [regions[index] for regions in self.regions.values()]
        return (
            _mean(point["region_recall"] for point in points),
            _mean(point["region_flag_rate"] for point in points),
        )

    def add_drift(self, reference: dict[str, EvalOutputs], label: str) -> None:
        """The absolute differences of the final scores from ``reference``'s on each query."""
        differences = np.concatenate(
            [np.abs(self.scores[c].scores - reference[c].scores) for c in self.auroc]
        )
        self.drift_max_abs = float(differences.max())
        self.drift_mean_abs = float(differences.mean())
        self.drift_reference = label

    def to_dict(self) -> dict:
        """The JSON record (the per-query scores stay out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "scores"}
