"""The values of a few-shot evaluation and how they render: per run its prompts, scores,
metrics and operating points; per category and over categories the mean and standard deviation
over runs, the operating points, the regions at them and the prompt choice; as JSON
(``to_dict``), markdown (``to_markdown``) and table rows (``rows``, ``selection_rows``,
``operating_rows``, ``region_rows``) under the column names and titles below.
``inctrl.evaluation`` computes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inctrl_runtime.datasets import NORMAL
from inctrl_runtime.decisions import TARGET_FPRS
from inctrl_runtime.pixel_metrics import AUPRO_LIMIT

AUPRO_COLUMN = f"AUPRO@{AUPRO_LIMIT:g}"
TABLE_COLUMNS = ("category", "AUROC", "AUPRC", "pixel AUROC", AUPRO_COLUMN, "normal / anomalous")
SELECTION_COLUMNS = ("category", "coverage AUROC", "random AUROC", "random min")
OPERATING_COLUMNS = ("category", "n", *(f"{alpha:g}: FPR / recall" for alpha in TARGET_FPRS))
SELECTION_TITLE = (
    "Prompt choice, image AUROC: the k train/good images that best cover its patch tokens "
    "(coverage) beside the random draws"
)
OPERATING_TITLE = (
    "Operating points at target false-positive rates: calibrated on the n train/good images "
    "that are not prompts; false-positive rate on test normals / recall on test anomalies, "
    "mean over runs (-: n too small for the rate)"
)
REGION_COLUMNS = ("category", *(f"{alpha:g}: recall / flagged" for alpha in TARGET_FPRS))
REGION_TITLE = (
    "Regions at target false-positive rates: each run's region threshold from the map maxima "
    "of the calibration images above; share of ground-truth regions with a pixel above it "
    "(recall) / share of test normals with one (flagged), mean over runs (-: n too small for "
    "the rate, or no masks)"
)


class MeanStd(NamedTuple):
    """Mean and standard deviation (population, numpy's default) over runs."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: Iterable[float]) -> MeanStd:
        values = np.asarray(list(values), dtype=np.float64)
        return cls(float(values.mean()), float(values.std()))

    def __str__(self) -> str:
        return f"{self.mean:.3f} ± {self.std:.3f}"


def _stats(value: MeanStd | None) -> dict[str, float] | None:
    return None if value is None else value._asdict()


def _means(*values: MeanStd | None) -> str:
    """'a / b' of the means over runs, '-' for an undefined one; '-' alone when all are."""
    if all(value is None for value in values):
        return "-"
    return " / ".join("-" if value is None else f"{value.mean:.3f}" for value in values)


class OperatingPoint(NamedTuple):
    """One run at a target false-positive rate: the threshold its calibration gives and what
    it measures on the test images, all three None when the calibration is too small for the
    rate (``decisions.min_normals``); then the region threshold of its calibration images' map
    maxima and what it measures on the test images' frame maps, None when too few images or
    (recall and flag rate) no masks (``metrics.RegionPoint``)."""

    target_fpr: float
    threshold: float | None
    false_positive_rate: float | None  # flagged test normals / test normals
    recall: float | None  # flagged test anomalies / test anomalies
    region_threshold: float | None
    region_recall: float | None  # ground-truth regions with a pixel above it / regions
    region_flag_rate: float | None  # test normals with a pixel above it / test normals


class OperatingPointStats(NamedTuple):
    """One target rate over runs: mean and std of the measured rates (None where undefined)."""

    target_fpr: float
    false_positive_rate: MeanStd | None
    recall: MeanStd | None
    region_recall: MeanStd | None
    region_flag_rate: MeanStd | None

    def to_dict(self) -> dict:
        return {
            "target_fpr": self.target_fpr,
            "false_positive_rate": _stats(self.false_positive_rate),
            "recall": _stats(self.recall),
            "region_recall": _stats(self.region_recall),
            "region_flag_rate": _stats(self.region_flag_rate),
        }


class SelectionComparison(NamedTuple):
    """Image AUROC of the coverage-selected prompts beside that of the random draws."""

    selected: float
    random: MeanStd
    random_min: float

    def to_dict(self) -> dict:
        return {
            "selected_auroc": self.selected,
            "random_auroc": {**self.random._asdict(), "min": self.random_min},
        }

    def row(self, name: str) -> tuple[str, ...]:
        return (name, f"{self.selected:.3f}", str(self.random), f"{self.random_min:.3f}")


@dataclass(frozen=True)
class RunResult:
    """One run on one category: its prompts, the score of every test image, the metrics."""

    seed: int | None  # None: the prompts came from the authors' prompt file or the selection
    prompts: tuple[str, ...]
    scores: tuple[float, ...]  # in the order of CategoryResult.images
    auroc: float
    auprc: float
    pixel_auroc: float | None  # None: no ground-truth masks
    aupro: float | None  # to a false-positive rate of AUPRO_LIMIT; None: no ground-truth masks
    # The train/good images calibrated on (its prompts excluded), and the operating points at
    # TARGET_FPRS; None and () for the coverage selection, which saw every train/good image.
    calibration: int | None = None
    operating_points: tuple[OperatingPoint, ...] = ()
    # Tiled: each test image's tiles' scores, in tile order (its score is their largest).
    tile_scores: tuple[tuple[float, ...], ...] | None = None

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "prompts": list(self.prompts),
            "auroc": self.auroc,
            "auprc": self.auprc,
            "pixel_auroc": self.pixel_auroc,
            "aupro": self.aupro,
            "calibration": self.calibration,
            "operating_points": [point._asdict() for point in self.operating_points],
            "scores": list(self.scores),
            "tile_scores": None
            if self.tile_scores is None
            else [list(t) for t in self.tile_scores],
        }


def _over_runs(values: Sequence[float | None]) -> MeanStd | None:
    return None if not values or None in values else MeanStd.of(values)


def _operating_stats(
    mean_of: Callable[[Callable[[RunResult], float | None]], MeanStd | None],
) -> tuple[OperatingPointStats, ...]:
    """Per target rate, ``mean_of`` a run's measured false-positive rate, recall, region
    recall and region-flag rate (each field of the stats is named after the run's field)."""
    return tuple(
        OperatingPointStats(
            alpha,
            *(
                mean_of(lambda run, i=index, name=name: getattr(run.operating_points[i], name))
                for name in OperatingPointStats._fields[1:]
            ),
        )
        for index, alpha in enumerate(TARGET_FPRS)
    )


@dataclass(frozen=True)
class CategoryResult:
    """All runs on one category's test images (``targets``: 0 normal, 1 anomalous), and the
    run with coverage-selected prompts (None with the authors' prompt files)."""

    category: str
    images: tuple[str, ...]
    targets: tuple[int, ...]
    runs: tuple[RunResult, ...]
    selected: RunResult | None = None

    @property
    def normal(self) -> int:
        return self.targets.count(NORMAL)

    @property
    def anomalous(self) -> int:
        return len(self.targets) - self.normal

    @property
    def auroc(self) -> MeanStd:
        return MeanStd.of(run.auroc for run in self.runs)

    @property
    def auprc(self) -> MeanStd:
        return MeanStd.of(run.auprc for run in self.runs)

    @property
    def pixel_auroc(self) -> MeanStd | None:
        return _over_runs([run.pixel_auroc for run in self.runs])

    @property
    def aupro(self) -> MeanStd | None:
        return _over_runs([run.aupro for run in self.runs])

    @property
    def calibration(self) -> int:
        """The calibration images of a run (drawn runs all have train/good minus k)."""
        return self.runs[0].calibration or 0

    @property
    def operating_points(self) -> tuple[OperatingPointStats, ...]:
        return _operating_stats(lambda value: _over_runs([value(run) for run in self.runs]))

    @property
    def selection(self) -> SelectionComparison | None:
        if self.selected is None:
            return None
        worst = min(run.auroc for run in self.runs)
        return SelectionComparison(self.selected.auroc, self.auroc, worst)

    def to_dict(self) -> dict:
        selection = self.selection
        return {
            "category": self.category,
            "normal": self.normal,
            "anomalous": self.anomalous,
            "auroc": _stats(self.auroc),
            "auprc": _stats(self.auprc),
            "pixel_auroc": _stats(self.pixel_auroc),
            "aupro": _stats(self.aupro),
            "calibration": self.calibration,
            "operating_points": [point.to_dict() for point in self.operating_points],
            "selection": None if selection is None else selection.to_dict(),
            "runs": [run.to_dict() for run in self.runs],
            "selected": None if self.selected is None else self.selected.to_dict(),
            "images": list(self.images),
            "targets": list(self.targets),
        }


@dataclass(frozen=True)
class EvaluationSettings:
    """What a report was measured with."""

    checkpoint: str | None
    model: str  # the model config's name
    shots: int
    seeds: tuple[int, ...] | None  # None: prompts from the authors' files
    prompts: str  # "train/good draws" or the folder of prompt files
    pixel: bool
    tiles: str | None = None  # e.g. "3x3 (every position)"; None: images seen whole

    def describe(self) -> str:
        runs = (
            f"1 run with the prompt files in {self.prompts}"
            if self.seeds is None
            else f"{len(self.seeds)} runs drawing prompts from train/good "
            f"(seeds {', '.join(map(str, self.seeds))})"
        )
        checkpoint = self.checkpoint or "an unnamed checkpoint"
        tiles = "" if self.tiles is None else f", tiles {self.tiles}"
        return f"InCTRL evaluation of {checkpoint} ({self.model}), k = {self.shots}, {runs}{tiles}"


def _markdown_table(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(columns) + " |",
        "| --- |" + " ---: |" * (len(columns) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


@dataclass(frozen=True)
class EvaluationReport:
    """Per-category results and their means. ``auroc`` etc. average the categories within each
    run, then give the mean and std of those averages over runs."""

    settings: EvaluationSettings
    categories: tuple[CategoryResult, ...]

    def _per_run(self, value: Callable[[RunResult], float | None]) -> np.ndarray | None:
        """Per run, the mean over categories of ``value``, leaving out the categories where
        it is None; None if it is None in every category."""
        table = [[value(run) for run in c.runs] for c in self.categories]
        table = [values for values in table if None not in values]
        return np.mean(table, axis=0) if table else None

    def _over_categories(self, value: Callable[[RunResult], float | None]) -> MeanStd | None:
        per_run = self._per_run(value)
        return None if per_run is None else MeanStd.of(per_run)

    @property
    def auroc(self) -> MeanStd:
        return self._over_categories(lambda run: run.auroc)

    @property
    def auprc(self) -> MeanStd:
        return self._over_categories(lambda run: run.auprc)

    @property
    def pixel_auroc(self) -> MeanStd | None:
        """Over the categories that have masks; None if none has."""
        return self._over_categories(lambda run: run.pixel_auroc)

    @property
    def aupro(self) -> MeanStd | None:
        """Over the categories that have masks; None if none has."""
        return self._over_categories(lambda run: run.aupro)

    @property
    def operating_points(self) -> tuple[OperatingPointStats, ...]:
        """Per target rate, over the categories whose calibration is large enough for it."""
        return _operating_stats(self._over_categories)

    @property
    def selection(self) -> SelectionComparison | None:
        """The mean over categories of the selected prompts' AUROC, beside the random draws'
        (the worst: the run whose mean over categories is lowest)."""
        if any(c.selected is None for c in self.categories):
            return None
        selected = float(np.mean([c.selected.auroc for c in self.categories]))
        worst = float(self._per_run(lambda run: run.auroc).min())
        return SelectionComparison(selected, self.auroc, worst)

    @property
    def calibration(self) -> int:
        return sum(c.calibration for c in self.categories)

    def rows(self) -> list[tuple[str, ...]]:
        """The table of ``TABLE_COLUMNS``: one row per category, then the mean row."""

        def row(name, auroc, auprc, pixel, aupro, normal, anomalous) -> tuple[str, ...]:
            pixels = (str(pixel or "-"), str(aupro or "-"))
            return (name, str(auroc), str(auprc), *pixels, f"{normal} / {anomalous}")

        rows = [
            row(c.category, c.auroc, c.auprc, c.pixel_auroc, c.aupro, c.normal, c.anomalous)
            for c in self.categories
        ]
        normal = sum(c.normal for c in self.categories)
        anomalous = sum(c.anomalous for c in self.categories)
        means = (self.auroc, self.auprc, self.pixel_auroc, self.aupro)
        return [*rows, row("mean", *means, normal, anomalous)]

    def selection_rows(self) -> list[tuple[str, ...]]:
        """The table of ``SELECTION_COLUMNS`` (empty without a selection), then the mean row."""
        if self.selection is None:
            return []
        return [
            *(c.selection.row(c.category) for c in self.categories),
            self.selection.row("mean"),
        ]

    def operating_rows(self) -> list[tuple[str, ...]]:
        """The table of ``OPERATING_COLUMNS``: one row per category, then the mean row."""

        def row(name: str, n: int, points: Sequence[OperatingPointStats]) -> tuple[str, ...]:
            return (name, str(n), *(_means(p.false_positive_rate, p.recall) for p in points))

        rows = [row(c.category, c.calibration, c.operating_points) for c in self.categories]
        return [*rows, row("mean", self.calibration, self.operating_points)]

    def region_rows(self) -> list[tuple[str, ...]]:
        """The table of ``REGION_COLUMNS`` (empty without masks): one row per category, then
        the mean row."""
        if self.pixel_auroc is None:
            return []

        def row(name: str, points: Sequence[OperatingPointStats]) -> tuple[str, ...]:
            return (name, *(_means(p.region_recall, p.region_flag_rate) for p in points))

        rows = [row(c.category, c.operating_points) for c in self.categories]
        return [*rows, row("mean", self.operating_points)]

    def to_dict(self) -> dict:
        """JSON-ready: settings, the means, and per category its runs and test images."""
        settings = self.settings
        selection = self.selection
        return {
            "settings": {
                "checkpoint": settings.checkpoint,
                "model": settings.model,
                "shots": settings.shots,
                "seeds": None if settings.seeds is None else list(settings.seeds),
                "prompts": settings.prompts,
                "pixel": settings.pixel,
                "tiles": settings.tiles,
                "target_fprs": list(TARGET_FPRS),
                "aupro_limit": AUPRO_LIMIT,
            },
            "mean": {
                "auroc": _stats(self.auroc),
                "auprc": _stats(self.auprc),
                "pixel_auroc": _stats(self.pixel_auroc),
                "aupro": _stats(self.aupro),
                "operating_points": [point.to_dict() for point in self.operating_points],
                "selection": None if selection is None else selection.to_dict(),
            },
            "categories": [c.to_dict() for c in self.categories],
        }

    def to_markdown(self) -> str:
        """A heading line and markdown tables (mean ± std over runs): the metrics, the prompt
        choice (with drawn runs), the operating points and (with masks) the regions at them."""
        lines = [self.settings.describe() + ".", "", *_markdown_table(TABLE_COLUMNS, self.rows())]
        selection = self.selection_rows()
        if selection:
            lines += ["", SELECTION_TITLE + ".", "", *_markdown_table(SELECTION_COLUMNS, selection)]
        operating = self.operating_rows()
        lines += ["", OPERATING_TITLE + ".", "", *_markdown_table(OPERATING_COLUMNS, operating)]
        regions = self.region_rows()
        if regions:
            lines += ["", REGION_TITLE + ".", "", *_markdown_table(REGION_COLUMNS, regions)]
        return "\n".join(lines) + "\n"
