"""Few-shot evaluation: image AUROC and AUPRC, and pixel AUROC where masks exist, per category.

A run is one set of k normal prompts: a seeded draw from the category's train/good images, or
the authors' prompt file. Per category, every test image is encoded once and its features serve
every run; a run only encodes its k prompts (its ``ReferenceBank``). As in the paper, results are
the mean and standard deviation over runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from inctrl.data import NORMAL, Sample, by_category, normal_pool
from inctrl.metrics import image_metrics, mask_in_model_view, pixel_auroc, pixel_selection
from inctrl.model import InCTRL
from inctrl.prompt_files import read_prompt_file
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import category_file, choose_prompts, prompt_generator

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
TABLE_COLUMNS = ("category", "AUROC", "AUPRC", "pixel AUROC", "normal / anomalous")


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


@dataclass(frozen=True)
class RunResult:
    """One run on one category: its prompts, the score of every test image, the metrics."""

    seed: int | None  # None: the prompts came from the authors' prompt file
    prompts: tuple[str, ...]
    scores: tuple[float, ...]  # in the order of CategoryResult.images
    auroc: float
    auprc: float
    pixel_auroc: float | None  # None: no ground-truth masks

    def to_dict(self) -> dict:
        return {
            "seed": self.seed,
            "prompts": list(self.prompts),
            "auroc": self.auroc,
            "auprc": self.auprc,
            "pixel_auroc": self.pixel_auroc,
            "scores": list(self.scores),
        }


@dataclass(frozen=True)
class CategoryResult:
    """All runs on one category's test images (``targets``: 0 normal, 1 anomalous)."""

    category: str
    images: tuple[str, ...]
    targets: tuple[int, ...]
    runs: tuple[RunResult, ...]

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
        values = [run.pixel_auroc for run in self.runs]
        return None if None in values else MeanStd.of(values)

    def to_dict(self) -> dict:
        return {
            "category": self.category,
            "normal": self.normal,
            "anomalous": self.anomalous,
            "auroc": _stats(self.auroc),
            "auprc": _stats(self.auprc),
            "pixel_auroc": _stats(self.pixel_auroc),
            "runs": [run.to_dict() for run in self.runs],
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

    def describe(self) -> str:
        runs = (
            f"1 run with the prompt files in {self.prompts}"
            if self.seeds is None
            else f"{len(self.seeds)} runs drawing prompts from train/good "
            f"(seeds {', '.join(map(str, self.seeds))})"
        )
        checkpoint = self.checkpoint or "an unnamed checkpoint"
        return f"InCTRL evaluation of {checkpoint} ({self.model}), k = {self.shots}, {runs}"


@dataclass(frozen=True)
class EvaluationReport:
    """Per-category results and their means. ``auroc`` etc. average the categories within each
    run, then give the mean and std of those averages over runs."""

    settings: EvaluationSettings
    categories: tuple[CategoryResult, ...]

    def _over_categories(self, metric: str) -> MeanStd | None:
        table = [[getattr(run, metric) for run in c.runs] for c in self.categories]
        table = [values for values in table if None not in values]
        return MeanStd.of(np.mean(table, axis=0)) if table else None

    @property
    def auroc(self) -> MeanStd:
        return self._over_categories("auroc")

    @property
    def auprc(self) -> MeanStd:
        return self._over_categories("auprc")

    @property
    def pixel_auroc(self) -> MeanStd | None:
        """Over the categories that have masks; None if none has."""
        return self._over_categories("pixel_auroc")

    def rows(self) -> list[tuple[str, ...]]:
        """The table of ``TABLE_COLUMNS``: one row per category, then the mean row."""

        def row(name, auroc, auprc, pixel, normal, anomalous) -> tuple[str, ...]:
            return (name, str(auroc), str(auprc), str(pixel or "-"), f"{normal} / {anomalous}")

        rows = [
            row(c.category, c.auroc, c.auprc, c.pixel_auroc, c.normal, c.anomalous)
            for c in self.categories
        ]
        normal = sum(c.normal for c in self.categories)
        anomalous = sum(c.anomalous for c in self.categories)
        return [*rows, row("mean", self.auroc, self.auprc, self.pixel_auroc, normal, anomalous)]

    def to_dict(self) -> dict:
        """JSON-ready: settings, the means, and per category its runs and test images."""
        settings = self.settings
        return {
            "settings": {
                "checkpoint": settings.checkpoint,
                "model": settings.model,
                "shots": settings.shots,
                "seeds": None if settings.seeds is None else list(settings.seeds),
                "prompts": settings.prompts,
                "pixel": settings.pixel,
            },
            "mean": {
                "auroc": _stats(self.auroc),
                "auprc": _stats(self.auprc),
                "pixel_auroc": _stats(self.pixel_auroc),
            },
            "categories": [c.to_dict() for c in self.categories],
        }

    def to_markdown(self) -> str:
        """A heading line and a markdown table (mean ± std over runs)."""
        lines = [
            self.settings.describe() + ".",
            "",
            "| " + " | ".join(TABLE_COLUMNS) + " |",
            "| --- |" + " ---: |" * (len(TABLE_COLUMNS) - 1),
            *("| " + " | ".join(row) + " |" for row in self.rows()),
        ]
        return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ prompts
def draw_prompts(pool: Sequence[Sample], shots: int, seed: int, category: str) -> list[Sample]:
    """k prompts drawn from a normal pool, the same for the same (seed, category) whatever the
    pool's order: the category's ``prompt_generator`` draws from the pool sorted by path."""
    ordered = sorted(pool, key=lambda sample: sample.image_path)
    return choose_prompts(ordered, shots, prompt_generator(seed, category))


class _PromptSet(NamedTuple):
    seed: int | None
    names: tuple[str, ...]
    images: list[str] | torch.Tensor  # image paths, or preprocessed k x 3 x S x S


class _Category(NamedTuple):
    name: str
    queries: list[Sample]
    prompt_sets: list[_PromptSet]


def check_arguments(
    shots: int, batch_size: int, seeds: Sequence[int], prompts_dir: str | os.PathLike | None
) -> None:
    """Refuse settings evaluation cannot run with (before anything slow happens)."""
    if shots < 1:
        raise InputError(f"--shots must be at least 1, got {shots}")
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, got {batch_size}")
    if prompts_dir is None and not seeds:
        raise InputError("no seeds: give at least one run (--seeds 1 or more)")
    if prompts_dir is not None and not Path(prompts_dir).is_dir():
        raise InputError(f"{prompts_dir}: no such folder of few-shot prompt files")


def _prompt_sets(
    name: str,
    group: Sequence[Sample],
    shots: int,
    seeds: Sequence[int],
    prompts_dir: str | os.PathLike | None,
    size: int,
) -> list[_PromptSet]:
    if prompts_dir is not None:
        path = category_file(prompts_dir, name, ".pt")
        pixels = read_prompt_file(path, size)
        if len(pixels) != shots:
            raise InputError(
                f"{path}: holds {len(pixels)} prompt images, but --shots is {shots}; use the "
                f"prompt files made for k = {shots}"
            )
        return [_PromptSet(None, tuple(f"{path}[{i}]" for i in range(shots)), pixels)]
    pool = normal_pool(group, name)
    if len(pool) < shots:
        raise InputError(
            f"category {name!r}: {shots} shots asked for, but train/good holds only {len(pool)} "
            "normal images to draw prompts from; lower --shots"
        )
    sets = []
    for seed in seeds:
        paths = [s.image_path for s in draw_prompts(pool, shots, seed, name)]
        sets.append(_PromptSet(seed, tuple(paths), paths))
    return sets


def _plan(samples, shots, seeds, prompts_dir, size) -> list[_Category]:
    """Every category with test images, its queries and prompt sets, checked up front."""
    plan = []
    for name, group in by_category(dict.fromkeys(samples)).items():  # drops repeated samples
        queries = [s for s in group if s.split == "test"]
        if not queries:
            continue  # a category given only for training, e.g. auxiliary data
        normal = sum(s.target == NORMAL for s in queries)
        if normal in (0, len(queries)):
            missing = "normal" if normal == 0 else "anomalous"
            raise InputError(
                f"category {name!r}: no {missing} test images, so AUROC is undefined; add some "
                "or leave the category out"
            )
        plan.append(
            _Category(name, queries, _prompt_sets(name, group, shots, seeds, prompts_dir, size))
        )
    if not plan:
        raise InputError("no test images among the data: evaluation needs <category>/test/...")
    return plan


# --------------------------------------------------------------------------------- evaluation
def _track(items: Sequence, description: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from rich.console import Console
    from rich.progress import track

    return track(items, description=description, console=Console(stderr=True), transient=True)


class _PixelLabels(NamedTuple):
    rows: list[int]  # the queries whose pixel labels are known
    masks: np.ndarray  # len(rows) x S x S bool
    selection: np.ndarray | None  # see pixel_selection


def _pixel_labels(queries: Sequence[Sample], size: int) -> _PixelLabels | None:
    """Pixel labels of the normal queries (all zero) and of the anomalous ones with a mask;
    None when no anomalous query has a mask."""
    if not any(s.mask_path for s in queries if s.target != NORMAL):
        return None
    rows = [i for i, s in enumerate(queries) if s.target == NORMAL or s.mask_path]
    masks = np.zeros((len(rows), size, size), dtype=bool)
    for index, row in enumerate(rows):
        if queries[row].target != NORMAL:
            masks[index] = mask_in_model_view(queries[row].mask_path, queries[row].image_path, size)
    return _PixelLabels(rows, masks, pixel_selection(masks))


def _evaluate_category(
    model: InCTRL, category: _Category, batch_size: int, pixel: bool, progress: bool
) -> CategoryResult:
    prior = model.text_prior(category.name)
    banks = [model.reference(p.images, batch_size) for p in category.prompt_sets]
    paths = [s.image_path for s in category.queries]
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    scores: list[list[torch.Tensor]] = [[] for _ in banks]
    maps: list[list[torch.Tensor]] = [[] for _ in banks]
    for chunk in _track(chunks, category.name, progress):
        features = model.encode(model.pixels(chunk))  # once per query, for every run
        for run, bank in enumerate(banks):
            out = model.head(features, bank, prior)
            scores[run].append(out.score.cpu())
            maps[run].append(out.patch_residual_map.cpu())
    targets = tuple(s.target for s in category.queries)
    labels = _pixel_labels(category.queries, model.config.vision.image_size) if pixel else None
    runs = []
    for prompts, run_scores, run_maps in zip(category.prompt_sets, scores, maps, strict=True):
        run_scores = torch.cat(run_scores).double().numpy()
        auroc, auprc = image_metrics(targets, run_scores)
        pixel_value = None
        if labels is not None:
            run_maps = torch.cat(run_maps)[labels.rows]
            pixel_value = pixel_auroc(run_maps, labels.masks, labels.selection)
        scores_tuple = tuple(float(v) for v in run_scores)
        runs.append(RunResult(prompts.seed, prompts.names, scores_tuple, auroc, auprc, pixel_value))
    return CategoryResult(category.name, tuple(paths), targets, tuple(runs))


@torch.no_grad()
def evaluate(
    model: InCTRL,
    samples: Iterable[Sample],
    shots: int,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    prompts_dir: str | os.PathLike | None = None,
    batch_size: int = 16,
    pixel: bool = True,
    progress: bool = False,
    checkpoint_name: str | None = None,
) -> EvaluationReport:
    """Evaluate few-shot detection on every category of ``samples`` that has test images.

    Per category the queries are its test images; each run draws ``shots`` prompts from its
    train/good images (``draw_prompts``, one run per seed) or, with ``prompts_dir``, takes the
    authors' ``<prompts_dir>/<category>.pt`` (one run). Pixel AUROC is computed where
    anomalous test images have masks and ``pixel`` is set. ``progress`` shows bars on stderr;
    ``checkpoint_name`` is recorded in the report's settings.
    """
    seeds = tuple(seeds)
    check_arguments(shots, batch_size, seeds, prompts_dir)
    plan = _plan(list(samples), shots, seeds, prompts_dir, model.config.vision.image_size)
    was_training = model.training
    model.eval()  # BatchNorm running statistics, whatever the caller left the model in
    try:
        results = [_evaluate_category(model, c, batch_size, pixel, progress) for c in plan]
    finally:
        model.train(was_training)
    settings = EvaluationSettings(
        checkpoint=checkpoint_name,
        model=model.config.name,
        shots=shots,
        seeds=None if prompts_dir is not None else seeds,
        prompts="train/good draws" if prompts_dir is None else str(prompts_dir),
        pixel=pixel,
    )
    return EvaluationReport(settings, tuple(results))
