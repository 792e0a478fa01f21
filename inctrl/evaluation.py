"""Few-shot evaluation: image AUROC and AUPRC, pixel AUROC and AUPRO where masks exist, and
operating points at target false-positive rates, per category.

A run is one set of k normal prompts: a seeded draw from the category's train/good images, or
the authors' prompt file. Per category, every test image and every train/good image is encoded
once and their features serve every run. As in the paper, results are the mean and standard
deviation over runs.

Each run is also calibrated (split-conformal, ``inctrl_runtime.decisions``) on the train/good
images that are not its prompts; at each of ``TARGET_FPRS`` its threshold gives a measured
false-positive rate on the test normals and a recall on the test anomalies, and the map maxima
of the same images give its region threshold (``inctrl_runtime.regions``): where masks exist, the
share of ground-truth regions it touches and of test normals it gives a region. With drawn runs,
the k prompts that best cover train/good's patch tokens (``coverage_selection``) make one more
run, reported beside the draws (it is not calibrated: it saw every train/good image).

Pixel metrics are measured in each test image's own frame, at its resolution: the patch map
carried into it (``regions.frame_map``) against the mask as the data set holds it; the pixels the
preprocessing's crop cut off are not inspected and are left out (``inctrl_runtime.pixel_metrics``).

With a tiling (``inctrl_runtime.tiling``), every image is cut into views (its tiles, and the
whole view with ``RxC+whole``), each encoded once; a frame's score is its views' largest patch
residual (``results.frame_scores``), its map the views' maps stitched, and calibration is of
frame scores. Its prompts are either every tile of the k prompt frames, each query tile compared
with all of them and the whole view with the prompts' whole views (``every``: the view groups
``inctrl-run register --tiles`` keeps), or the k prompts' views at the query view's own position
(``same``: one bank per position).

The report's values and their rendering live in ``inctrl.evaluation_report``; the inspection
report of each category's first run in ``inctrl.evaluation_gallery``.
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
from inctrl.evaluation_gallery import EvaluationGallery, FirstRun
from inctrl.evaluation_report import (
    CategoryResult,
    EvaluationReport,
    EvaluationSettings,
    OperatingPoint,
    RunResult,
)
from inctrl.metrics import image_metrics
from inctrl.model import InCTRL
from inctrl.prompt_files import read_prompt_file
from inctrl.state import ReferenceBank, TextPrior
from inctrl_runtime.datasets import NORMAL, Sample
from inctrl_runtime.decisions import TARGET_FPRS, decide
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import category_file
from inctrl_runtime.pixel_metrics import PixelLabels, PixelValues, region_point
from inctrl_runtime.preprocess import decode, pixel_digest
from inctrl_runtime.results import Scores, frame_scores
from inctrl_runtime.selection import coverage_selection, random_draw
from inctrl_runtime.tiling import Tiling

DEFAULT_SEEDS = (0, 1, 2, 3, 4)
# Which prompt tiles a query tile is compared with: all of them, or those at its position.
TILE_PROMPTS = ("every", "same")


def operating_points(
    calibration: Sequence[float],
    targets: Sequence[int],
    scores: Sequence[float],
    target_fprs: Sequence[float] = TARGET_FPRS,
    map_maxima: Sequence[float] = (),
    pixels: PixelValues | None = None,
) -> tuple[OperatingPoint, ...]:
    """The operating points of test ``scores`` (``targets``: 0 normal, 1 anomalous) decided
    against the scores of normal calibration images, in float32 as the runtime decides; and the
    region threshold of the same images' ``map_maxima`` (their ``max_patch_residual``) with the
    region recall and region-flag rate it gives on the test images' ``pixels`` (None: no
    masks; see ``region_point``)."""
    calibration = np.sort(np.asarray(calibration, dtype=np.float32))
    maxima = np.sort(np.asarray(map_maxima, dtype=np.float32))
    scores = np.asarray(scores, dtype=np.float32)
    anomalous = np.asarray(targets) != NORMAL
    points = []
    for alpha in target_fprs:
        decisions = decide(calibration, scores, alpha)
        regions = region_point(maxima, pixels, alpha)
        rates = (None, None)
        if decisions.anomalous is not None:
            flagged = decisions.anomalous
            rates = (float(flagged[~anomalous].mean()), float(flagged[anomalous].mean()))
        points.append(
            OperatingPoint(
                alpha,
                decisions.threshold,
                *rates,
                regions.region_threshold,
                regions.region_recall,
                regions.region_flag_rate,
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
    shots: int,
    batch_size: int,
    seeds: Sequence[int],
    prompts_dir: str | os.PathLike | None,
    tiling: Tiling | None = None,
    tile_prompts: str = "every",
) -> None:
    """Refuse settings evaluation cannot run with (before anything slow happens)."""
    if tile_prompts not in TILE_PROMPTS:
        raise InputError(f"unknown --tile-prompts {tile_prompts!r}: choose every or same")
    if tiling is not None and prompts_dir is not None:
        raise InputError("--tiles cuts frames drawn from train/good: leave out --prompts")
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


def _batches(items: Sequence, size: int) -> list[Sequence]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Pool(NamedTuple):
    """A category's train/good images encoded once: prompts' banks and calibration scores come
    from these features, the coverage selection from their patch tokens. A tiled pool holds
    each image's T tiles, image by image (image r's tile t is row r * T + t)."""

    features: ImageFeatures | None  # (n * T) x E and (n * T) x L x P x D; None: n = 0
    digests: tuple[str, ...]  # each image's pixel digest (of its tiles, when tiled)
    tiles: int = 1  # T

    def rows(self, rows: Sequence[int], positions: Sequence[int] | None = None) -> ImageFeatures:
        """The features of images ``rows``: all their views, or those at ``positions``."""
        return _views(self.features, rows, self.tiles, positions)


def _views(
    features: ImageFeatures, rows: Sequence[int], tiles: int, positions: Sequence[int] | None
) -> ImageFeatures:
    """The rows of ``features`` (T views an image, image by image) of images ``rows`` at view
    ``positions`` (None: all), image by image."""
    views = range(tiles) if positions is None else positions
    index = torch.as_tensor(
        [row * tiles + view for row in rows for view in views],
        dtype=torch.long,
        device=features.embedding.device,
    )
    return ImageFeatures(features.embedding[index], features.patches[index])


def _frame_pixels(model: InCTRL, paths: Sequence[str], tiling: Tiling | None) -> torch.Tensor:
    """The encoder's input for images: one view each, or each image's T tiles in tile order."""
    if tiling is None:
        return model.pixels(paths)
    config = model.preprocessing
    tiles = [decode(path, config, tiling=tiling).pixels(config) for path in paths]
    return torch.from_numpy(np.concatenate(tiles)).to(model.device)


def _encode_pool(
    model: InCTRL, category: _Category, batch_size: int, progress: bool, tiling: Tiling | None
) -> _Pool:
    paths = [s.image_path for s in category.pool]
    tiles = 1 if tiling is None else tiling.count
    features, digests = [], []
    for chunk in _track(_batches(paths, batch_size), f"{category.name} train/good", progress):
        pixels = _frame_pixels(model, chunk, tiling)
        by_image = pixels.cpu().numpy().reshape(len(chunk), -1, *pixels.shape[1:])
        digests.extend(pixel_digest(p) for p in by_image)
        features.append(model.encode(pixels))
    if not features:
        return _Pool(None, (), tiles)
    return _Pool(
        ImageFeatures(*(torch.cat(f) for f in zip(*features, strict=True))), tuple(digests), tiles
    )


def _selected_prompts(category: _Category, pool: _Pool) -> _PromptSet:
    """The k pool images that best cover the pool's patch tokens (``coverage_selection``)."""
    chosen = coverage_selection(pool.features.patches.cpu().numpy(), category.shots).indices
    return _PromptSet(None, tuple(category.pool[row].image_path for row in chosen), chosen)


class _Banks(NamedTuple):
    """A run's banks, each for a group of view positions (``Tiling.groups``): the tiles' and
    the whole view's, or with ``same`` tile prompts one per position (bank g for the query
    views at the positions of group g)."""

    groups: tuple[tuple[tuple[int, ...], ReferenceBank], ...]
    digests: tuple[str, ...]  # the prompts' pixel digests (left out of calibration)

    def scores(
        self, model: InCTRL, features: ImageFeatures, prior: TextPrior, tiles: int
    ) -> tuple[Scores, np.ndarray, np.ndarray | None]:
        """Frame scores of encoded images ((n * T) rows, image by image), each frame's views'
        scores (n x T; untiled, n x 1) and its deciding view (``frame_scores``; untiled: None)."""
        if len(self.groups) == 1:
            out = [field.cpu().numpy() for field in model.head(features, self.groups[0][1], prior)]
        else:  # each group against its own bank, put back in row order
            images = range(len(features.embedding) // tiles)
            out = None
            for positions, bank in self.groups:
                part = model.head(_views(features, images, tiles, positions), bank, prior)
                rows = [r * tiles + t for r in images for t in positions]
                if out is None:
                    out = [np.zeros((len(features.embedding), *f.shape[1:]), np.float32)
                           for f in part]  # fmt: skip
                for field, values in zip(out, part, strict=True):
                    field[rows] = values.cpu().numpy()
        view_scores = Scores(*out)
        by_view = view_scores.score.reshape(-1, tiles)
        frames, decisive = frame_scores(view_scores, tiles)
        return frames, by_view, decisive


def _banks(
    model: InCTRL,
    prompts: _PromptSet,
    pool: _Pool,
    batch_size: int,
    tiling: Tiling | None,
    same_position: bool,
) -> _Banks:
    """A run's banks: from its prompts' pool features (a bank per group of view positions,
    ``Tiling.groups``), or a prompt file's images encoded."""
    if prompts.pixels is not None:
        bank = model.reference(prompts.pixels, batch_size)
        return _Banks((((0,), bank),), bank.digests)
    digests = tuple(pool.digests[row] for row in prompts.pool_rows)
    groups = ((0,),) if tiling is None else tiling.groups(same_position)
    banks = []
    for positions in groups:
        features = pool.rows(prompts.pool_rows, positions)
        patches, adapted_mean = model.inctrl_head.reference(features)
        bank = ReferenceBank(patches.contiguous(), adapted_mean, len(features.embedding),
                             prompts.names, digests)  # fmt: skip
        banks.append((positions, bank))
    return _Banks(tuple(banks), digests)


class _Calibration(NamedTuple):
    """A run's calibration images' final scores and map maxima (``max_patch_residual``)."""

    scores: np.ndarray  # n
    map_maxima: np.ndarray  # n


def _calibration(
    model: InCTRL, pool: _Pool, banks: _Banks, prior: TextPrior, batch_size: int
) -> _Calibration:
    """The pool images that are not the bank's prompts, by pixel digest (so a prompt file's
    images and copies of a prompt are left out too: they would score near 0)."""
    prompts = set(banks.digests)
    rows = [row for row, digest in enumerate(pool.digests) if digest not in prompts]
    outputs = [
        banks.scores(model, pool.rows(chunk), prior, pool.tiles)[0]
        for chunk in _batches(rows, batch_size)
    ]
    if not outputs:
        return _Calibration(np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32))
    scores = np.concatenate([out.score for out in outputs])
    maxima = np.concatenate([out.max_patch_residual for out in outputs])
    return _Calibration(scores, maxima)


def _run_result(
    prompts: _PromptSet,
    targets: tuple[int, ...],
    scores: np.ndarray,
    patch_maps: np.ndarray,
    labels: PixelLabels | None,
    calibration: _Calibration | None,
    tile_scores: np.ndarray | None = None,
) -> RunResult:
    """One run's metrics from its test images' ``scores`` (n) and ``patch_maps`` (n x P; tiled,
    with their ``tile_scores``, n x T). Their pixel values, as large as the test images'
    frames, live only while this runs."""
    auroc, auprc = image_metrics(targets, scores)
    pixels = None if labels is None else labels.values(patch_maps)
    points = ()
    if calibration is not None:
        points = operating_points(
            calibration.scores, targets, scores, map_maxima=calibration.map_maxima, pixels=pixels
        )
    return RunResult(
        prompts.seed,
        prompts.names,
        tuple(float(v) for v in scores),
        auroc,
        auprc,
        None if pixels is None else pixels.auroc(),
        None if pixels is None else pixels.aupro(),
        None if calibration is None else len(calibration.scores),
        points,
        None if tile_scores is None else tuple(tuple(map(float, row)) for row in tile_scores),
    )


def _evaluate_category(
    model: InCTRL,
    category: _Category,
    batch_size: int,
    pixel: bool,
    progress: bool,
    tiling: Tiling | None = None,
    same_position: bool = False,
    gallery: EvaluationGallery | None = None,
) -> CategoryResult:
    prior = model.text_prior(category.name)
    pool = _encode_pool(model, category, batch_size, progress, tiling)
    prompt_sets = list(category.prompt_sets)
    if category.select:
        prompt_sets.append(_selected_prompts(category, pool))
    banks = [_banks(model, prompts, pool, batch_size, tiling, same_position)
             for prompts in prompt_sets]  # fmt: skip
    paths = [s.image_path for s in category.queries]
    scores: list[list[np.ndarray]] = [[] for _ in banks]
    maps: list[list[np.ndarray]] = [[] for _ in banks]
    tiles: list[list[np.ndarray]] = [[] for _ in banks]
    first: list[tuple[Scores, np.ndarray | None]] = []  # the first run's, for its report
    for chunk in _track(_batches(paths, batch_size), category.name, progress):
        features = model.encode(_frame_pixels(model, chunk, tiling))  # once, for every run
        for run, run_banks in enumerate(banks):
            out, by_tile, decisive = run_banks.scores(model, features, prior, pool.tiles)
            scores[run].append(out.score)
            maps[run].append(out.patch_residual_map)
            tiles[run].append(by_tile)
            if run == 0 and gallery is not None:
                first.append((out, decisive))
    targets = tuple(s.target for s in category.queries)
    labels = None
    if pixel:  # the masks themselves are read when a run uses them, one at a time
        masks = [s.mask_path for s in category.queries]
        labels = PixelLabels.of(paths, targets, masks, model.config.vision.image_size, tiling)
    runs = []
    for index, prompts in enumerate(prompt_sets):
        calibration = None
        if index < len(category.prompt_sets):  # the selection saw every pool image: not these
            calibration = _calibration(model, pool, banks[index], prior, batch_size)
        run_scores = np.concatenate(scores[index]).astype(np.float64)
        run_maps = np.concatenate(maps[index]).astype(np.float32)
        run_tiles = np.concatenate(tiles[index]) if tiling is not None else None
        runs.append(
            _run_result(prompts, targets, run_scores, run_maps, labels, calibration, run_tiles)
        )
        if index == 0 and gallery is not None:
            found, decisive = zip(*first, strict=True)
            gallery.add(FirstRun(
                category.name, paths, [s.defect for s in category.queries],
                Scores(*(np.concatenate(field) for field in zip(*found, strict=True))),
                prompts.names, None if calibration is None else tuple(calibration),
                None if tiling is None else np.concatenate(decisive),
            ))  # fmt: skip
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
    tiling: Tiling | None = None,
    tile_prompts: str = "every",
    gallery: EvaluationGallery | None = None,
) -> EvaluationReport:
    """Evaluate few-shot detection on every category of ``samples`` that has test images.

    Per category the queries are its test images; each run draws ``shots`` prompts from its
    train/good images (``draw_prompts``, one run per seed) or, with ``prompts_dir``, takes the
    authors' ``<prompts_dir>/<category>.pt`` (one run). Pixel AUROC, AUPRO (to the
    false-positive rate ``pixel_metrics.AUPRO_LIMIT``) and the region metrics are computed where
    anomalous test images have masks and ``pixel`` is set, in each test image's frame at its
    resolution (not-inspected pixels left out). Each run is calibrated on the train/good images
    that are not its prompts (by pixel digest) and measured at ``TARGET_FPRS``; with
    ``selection``, drawn runs get a coverage-selected run beside them (it compares every pair of
    train/good images: n^2 patch blocks, minutes on a large pool with the full model).
    ``progress`` shows bars on stderr; ``checkpoint_name`` is recorded in the
    report's settings. With ``tiling``, images are scored tile by tile against ``tile_prompts``
    (``every`` prompt tile, or those at the ``same`` position), with no coverage-selected run
    (its pairwise comparison grows with the square of the tiles' patches). ``gallery`` gets
    each category's first run for an inspection report.
    """
    seeds = tuple(seeds)
    check_arguments(shots, batch_size, seeds, prompts_dir, tiling, tile_prompts)
    size = model.config.vision.image_size
    selection = selection and tiling is None
    plan = _plan(list(samples), shots, seeds, prompts_dir, size, selection)
    was_training = model.training
    model.eval()  # BatchNorm running statistics, whatever the caller left the model in
    try:
        same = tile_prompts == "same"
        results = [
            _evaluate_category(model, c, batch_size, pixel, progress, tiling, same, gallery)
            for c in plan
        ]
    finally:
        model.train(was_training)
    settings = EvaluationSettings(
        checkpoint=checkpoint_name,
        model=model.config.name,
        shots=shots,
        seeds=None if prompts_dir is not None else seeds,
        prompts="train/good draws" if prompts_dir is None else str(prompts_dir),
        pixel=pixel,
        tiles=None if tiling is None else f"{tiling} ({tile_prompts} position)",
    )
    return EvaluationReport(settings, tuple(results))
