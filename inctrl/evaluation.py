"""Few-shot evaluation: image AUROC and AUPRC, pixel AUROC where masks exist, and operating
points at target false-positive rates, per category.

A run is one set of k normal prompts: a seeded draw from the category's train/good images, or
the authors' prompt file. Per category, every test image and every train/good image is encoded
once and their features serve every run. As in the paper, results are the mean and standard
deviation over runs.

Each run is also calibrated (split-conformal, ``inctrl_runtime.decisions``) on the train/good
images that are not its prompts; at each of ``TARGET_FPRS`` its threshold gives a measured
false-positive rate on the test normals and a recall on the test anomalies. With drawn runs,
the k prompts that best cover train/good's patch tokens (``coverage_selection``) make one more
run, reported beside the draws (it is not calibrated: it saw every train/good image).

The report's values and their rendering live in ``inctrl.evaluation_report``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from inctrl.backbone import ImageFeatures
from inctrl.data import by_category, normal_pool
from inctrl.evaluation_report import (
    CategoryResult,
    EvaluationReport,
    EvaluationSettings,
    OperatingPoint,
    RunResult,
)
from inctrl.metrics import image_metrics, mask_in_model_view, pixel_auroc, pixel_selection
from inctrl.model import InCTRL
from inctrl.prompt_files import read_prompt_file
from inctrl.state import ReferenceBank, TextPrior
from inctrl_runtime.datasets import NORMAL, Sample
from inctrl_runtime.decisions import TARGET_FPRS, decide
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import category_file
from inctrl_runtime.preprocess import pixel_digest
from inctrl_runtime.selection import coverage_selection, random_draw

DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def operating_points(
    calibration: Sequence[float],
    targets: Sequence[int],
    scores: Sequence[float],
    target_fprs: Sequence[float] = TARGET_FPRS,
) -> tuple[OperatingPoint, ...]:
    """The operating points of test ``scores`` (``targets``: 0 normal, 1 anomalous) decided
    against the scores of normal calibration images, in float32 as the runtime decides."""
    calibration = np.sort(np.asarray(calibration, dtype=np.float32))
    scores = np.asarray(scores, dtype=np.float32)
    anomalous = np.asarray(targets) != NORMAL
    points = []
    for alpha in target_fprs:
        decisions = decide(calibration, scores, alpha)
        if decisions.anomalous is None:
            points.append(OperatingPoint(alpha, None, None, None))
            continue
        flagged = decisions.anomalous
        false_positives = float(flagged[~anomalous].mean())
        points.append(
            OperatingPoint(
                alpha, decisions.threshold, false_positives, float(flagged[anomalous].mean())
            )
        )
    return tuple(points)


# ------------------------------------------------------------------------------------ prompts
def draw_prompts(pool: Sequence[Sample], shots: int, seed: int, category: str) -> list[Sample]:
    """k prompts drawn from a normal pool, the same for the same (seed, category) whatever the
    pool's order: the ``random`` selection (``random_draw``) on the pool sorted by path."""
    return random_draw(pool, shots, seed, category, key=lambda sample: sample.image_path)


class _PromptSet(NamedTuple):
    seed: int | None
    names: tuple[str, ...]
    pool_rows: tuple[int, ...] | None  # the prompts' rows in the category's pool; None: pixels
    pixels: torch.Tensor | None = None  # a prompt file's preprocessed k x 3 x S x S


class _Category(NamedTuple):
    name: str
    queries: list[Sample]
    pool: list[Sample]  # train/good sorted by path: prompts are drawn and calibrated on it
    prompt_sets: list[_PromptSet]
    shots: int
    select: bool  # add a run with coverage-selected prompts (when prompts are drawn)


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
    pool: Sequence[Sample],
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
        return [_PromptSet(None, tuple(f"{path}[{i}]" for i in range(shots)), None, pixels)]
    if len(pool) < shots:
        raise InputError(
            f"category {name!r}: {shots} shots asked for, but train/good holds only {len(pool)} "
            "normal images to draw prompts from; lower --shots"
        )
    rows = {sample.image_path: row for row, sample in enumerate(pool)}
    sets = []
    for seed in seeds:
        paths = tuple(s.image_path for s in draw_prompts(pool, shots, seed, name))
        sets.append(_PromptSet(seed, paths, tuple(rows[path] for path in paths)))
    return sets


def _plan(samples, shots, seeds, prompts_dir, size, selection=True) -> list[_Category]:
    """Every category with test images, its queries, pool and prompt sets, checked up front."""
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
        # Sorted by path, a pool's features are the same whatever the order of the samples.
        pool = sorted(normal_pool(group, name), key=lambda sample: sample.image_path)
        prompt_sets = _prompt_sets(name, pool, shots, seeds, prompts_dir, size)
        select = selection and prompts_dir is None
        plan.append(_Category(name, queries, pool, prompt_sets, shots, select))
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


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Pool(NamedTuple):
    """A category's train/good images encoded once: prompts' banks and calibration scores come
    from these features, the coverage selection from their patch tokens."""

    features: ImageFeatures | None  # n x E and n x L x P x D on the model's device; None: n = 0
    digests: tuple[str, ...]  # each image's pixel digest

    def rows(self, rows: Sequence[int]) -> ImageFeatures:
        index = torch.as_tensor(rows, dtype=torch.long, device=self.features.embedding.device)
        return ImageFeatures(self.features.embedding[index], self.features.patches[index])


def _encode_pool(model: InCTRL, category: _Category, batch_size: int, progress: bool) -> _Pool:
    paths = [s.image_path for s in category.pool]
    features, digests = [], []
    for chunk in _track(_batches(paths, batch_size), f"{category.name} train/good", progress):
        pixels = model.pixels(chunk)
        digests.extend(pixel_digest(p) for p in pixels.cpu().numpy())
        features.append(model.encode(pixels))
    if not features:
        return _Pool(None, ())
    return _Pool(
        ImageFeatures(*(torch.cat(f) for f in zip(*features, strict=True))), tuple(digests)
    )


def _selected_prompts(category: _Category, pool: _Pool) -> _PromptSet:
    """The k pool images that best cover the pool's patch tokens (``coverage_selection``)."""
    chosen = coverage_selection(pool.features.patches.cpu().numpy(), category.shots).indices
    return _PromptSet(None, tuple(category.pool[row].image_path for row in chosen), chosen)


def _bank(model: InCTRL, prompts: _PromptSet, pool: _Pool, batch_size: int) -> ReferenceBank:
    """A run's bank: from its prompts' pool features, or a prompt file's images encoded."""
    if prompts.pixels is not None:
        return model.reference(prompts.pixels, batch_size)
    patches, adapted_mean = model.inctrl_head.reference(pool.rows(prompts.pool_rows))
    digests = tuple(pool.digests[row] for row in prompts.pool_rows)
    shots = len(prompts.names)
    return ReferenceBank(patches.contiguous(), adapted_mean, shots, prompts.names, digests)


def _calibration_scores(
    model: InCTRL, pool: _Pool, bank: ReferenceBank, prior: TextPrior, batch_size: int
) -> np.ndarray:
    """The scores of the pool images that are not the bank's prompts, by pixel digest (so a
    prompt file's images and copies of a prompt are left out too: they would score near 0)."""
    prompts = set(bank.digests)
    rows = [row for row, digest in enumerate(pool.digests) if digest not in prompts]
    scores = [
        model.head(pool.rows(chunk), bank, prior).score for chunk in _batches(rows, batch_size)
    ]
    return torch.cat(scores).cpu().numpy() if scores else np.zeros(0, dtype=np.float32)


def _evaluate_category(
    model: InCTRL, category: _Category, batch_size: int, pixel: bool, progress: bool
) -> CategoryResult:
    prior = model.text_prior(category.name)
    pool = _encode_pool(model, category, batch_size, progress)
    prompt_sets = list(category.prompt_sets)
    if category.select:
        prompt_sets.append(_selected_prompts(category, pool))
    banks = [_bank(model, prompts, pool, batch_size) for prompts in prompt_sets]
    paths = [s.image_path for s in category.queries]
    scores: list[list[torch.Tensor]] = [[] for _ in banks]
    maps: list[list[torch.Tensor]] = [[] for _ in banks]
    for chunk in _track(_batches(paths, batch_size), category.name, progress):
        features = model.encode(model.pixels(chunk))  # once per query, for every run
        for run, bank in enumerate(banks):
            out = model.head(features, bank, prior)
            scores[run].append(out.score.cpu())
            maps[run].append(out.patch_residual_map.cpu())
    targets = tuple(s.target for s in category.queries)
    labels = _pixel_labels(category.queries, model.config.vision.image_size) if pixel else None
    runs = []
    for index, prompts in enumerate(prompt_sets):
        run_scores = torch.cat(scores[index]).double().numpy()
        auroc, auprc = image_metrics(targets, run_scores)
        pixel_value = None
        if labels is not None:
            run_maps = torch.cat(maps[index])[labels.rows]
            pixel_value = pixel_auroc(run_maps, labels.masks, labels.selection)
        calibration, points = None, ()
        if index < len(category.prompt_sets):  # the selection saw every pool image: not these
            normals = _calibration_scores(model, pool, banks[index], prior, batch_size)
            calibration, points = len(normals), operating_points(normals, targets, run_scores)
        scores_tuple = tuple(float(v) for v in run_scores)
        runs.append(
            RunResult(
                prompts.seed,
                prompts.names,
                scores_tuple,
                auroc,
                auprc,
                pixel_value,
                calibration,
                points,
            )
        )
    selected = runs.pop() if category.select else None
    return CategoryResult(category.name, tuple(paths), targets, tuple(runs), selected)


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
    selection: bool = True,
) -> EvaluationReport:
    """Evaluate few-shot detection on every category of ``samples`` that has test images.

    Per category the queries are its test images; each run draws ``shots`` prompts from its
    train/good images (``draw_prompts``, one run per seed) or, with ``prompts_dir``, takes the
    authors' ``<prompts_dir>/<category>.pt`` (one run). Pixel AUROC is computed where
    anomalous test images have masks and ``pixel`` is set. Each run is calibrated on the
    train/good images that are not its prompts (by pixel digest) and measured at
    ``TARGET_FPRS``; with ``selection``, drawn runs get a coverage-selected run beside them (it
    compares every pair of train/good images: n^2 patch blocks, minutes on a large pool with the
    full model). ``progress`` shows bars on stderr; ``checkpoint_name`` is recorded in the
    report's settings.
    """
    seeds = tuple(seeds)
    check_arguments(shots, batch_size, seeds, prompts_dir)
    size = model.config.vision.image_size
    plan = _plan(list(samples), shots, seeds, prompts_dir, size, selection)
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
