"""Accuracy-controlled int8: ``inctrl-export onnx --precision int8 --accuracy-data DIR``.

The encoder is quantized, every labelled category of the data is scored with it and with the
PyTorch fp32 model, and block products return to fp32, the most sensitive first, until every
category's image AUROC change is within the bound (docs/int8.md, "Accuracy control").

- **The data**: MVTec-layout categories. Per category, k prompts are drawn from ``train/good``
  as ``inctrl evaluate`` draws them (``random_draw``, seed 0) and its test images are the
  queries; so ``inctrl-export verify BUNDLE --images DIR/<category> -k K`` measures the same
  change. The runtime scores each split with the bundle's fp32 head and priors; PyTorch fp32
  is the reference, as in ``verify``.
- **Units**: products return to fp32 a unit at a time: a kind in every block, a block's four,
  or one product (``GRANULARITIES``); a unit is named as ``--keep-fp32`` names it.
- **Order**: from every product int8, each unit alone returns to fp32 and the data is scored
  again; the unit after which the final scores lie nearest PyTorch's (the least mean absolute
  difference over every query) is the most sensitive; equal drifts go to the unit that comes
  first in the graph. Units are ranked by the scores' drift because the AUROC is not a measure
  of single images (a swapped pair moves it by a step), as NNCF ranks by its outputs'
  difference where its metric is not per sample; the bound is judged on the AUROC.
- **Search**: the units return in that order, one more each step, until every category holds
  the bound (the first step's split was measured by the ranking). When only the all-fp32
  encoder would hold it, ``Int8BringsNothing`` is raised.

Every split is quantized with the activation ranges of one calibration (``Int8Quantizer``).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inctrl_export.parity import AUROC_MARKS, auroc_within
from inctrl_export.quantize import Int8Quantizer, product_choice
from inctrl_runtime.datasets import category_folders, normal_images, scan_category
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import preprocess_many
from inctrl_runtime.selection import random_draw

if TYPE_CHECKING:
    from inctrl.model import InCTRL

GRANULARITIES = ("kind", "block", "product")
DEFAULT_GRANULARITY = "kind"
DEFAULT_MAX_AUROC_CHANGE = AUROC_MARKS["int8"]
DEFAULT_SHOTS = 2
# The prompts' draw: the one ``inctrl evaluate`` makes for a category with its first seed.
PROMPT_SEED = 0
_BATCH = 16

Log = Callable[[str], None]


class Int8BringsNothing(Exception):
    """Only the all-fp32 encoder keeps every category's AUROC change within the bound."""


@dataclass(frozen=True)
class LabelledCategory:
    """One category of the accuracy data: its k prompts, its test images and their labels."""

    name: str
    prompts: tuple[str, ...]
    queries: tuple[str, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class AccuracyControl:
    """What ``--accuracy-data`` asks for: the labelled categories, the bound on each one's
    |AUROC change|, the units products return to fp32 in, and k."""

    data: Path
    categories: tuple[LabelledCategory, ...]
    max_auroc_change: float = DEFAULT_MAX_AUROC_CHANGE
    granularity: str = DEFAULT_GRANULARITY
    shots: int = DEFAULT_SHOTS

    @classmethod
    def checked(
        cls,
        data: str | os.PathLike,
        known: Sequence[str],
        max_auroc_change: float = DEFAULT_MAX_AUROC_CHANGE,
        granularity: str = DEFAULT_GRANULARITY,
        shots: int = DEFAULT_SHOTS,
    ) -> AccuracyControl:
        """The settings, refused in one line where they cannot work: a bound that is not a
        number in [0, 1), an unknown granularity, k below 1, a folder without MVTec-layout
        categories, a category the bundle has no text prior for (``known``), one without
        k normal training images or without both good and defective test images."""
        if not (math.isfinite(max_auroc_change) and 0 <= max_auroc_change < 1):
            raise InputError(
                f"--max-auroc-change must be a number in [0, 1), got {max_auroc_change}"
            )
        if granularity not in GRANULARITIES:
            choices = ", ".join(GRANULARITIES)
            raise InputError(f"unknown --accuracy-granularity {granularity!r}; choose {choices}")
        if shots < 1:
            raise InputError(f"--accuracy-shots must be at least 1, got {shots}")
        folder = Path(data)
        try:
            found = category_folders(folder)
        except InputError as err:
            raise InputError(f"--accuracy-data {err}") from None
        categories = tuple(_labelled(path, shots, known) for path in found)
        return cls(folder, categories, float(max_auroc_change), granularity, shots)

    @property
    def images(self) -> int:
        """How many images every split is scored on (prompts and queries)."""
        return sum(len(c.prompts) + len(c.queries) for c in self.categories)


def labelled_category(folder: Path, shots: int, seed: int, name: str) -> LabelledCategory:
    """A category folder in MVTec layout as labelled data is scored: k prompts drawn from
    ``train/good`` as ``inctrl evaluate`` draws them for ``name`` with ``seed``, and the test
    images with their labels; refused in one line without k normal images or test images."""
    pool = [str(path) for path in normal_images(folder)]
    test = [sample for sample in scan_category(folder) if sample.split == "test"]
    if len(pool) < shots or not test:
        raise InputError(
            f"{folder}: needs at least {shots} images in train/good and some in test/ "
            f"(found {len(pool)} and {len(test)})"
        )
    prompts = tuple(random_draw(pool, shots, seed, name))
    queries = tuple(sample.image_path for sample in test)
    return LabelledCategory(name, prompts, queries, tuple(sample.target for sample in test))


def _labelled(folder: Path, shots: int, known: Sequence[str]) -> LabelledCategory:
    """An accuracy-data category: one the bundle knows, with good and defective test images."""
    if folder.name not in known:
        raise InputError(
            f"--accuracy-data {folder}: the bundle has no text prior for {folder.name!r} (it "
            f"has {', '.join(known)}); add --category {folder.name}"
        )
    try:
        category = labelled_category(folder, shots, PROMPT_SEED, folder.name)
    except InputError as err:
        raise InputError(f"--accuracy-data {err}") from None
    defective = sum(category.labels)
    if not 0 < defective < len(category.labels):
        raise InputError(
            f"--accuracy-data {folder}: needs both good and defective test images for an "
            f"AUROC (found {len(category.labels) - defective} good, {defective} defective)"
        )
    return category


def units(products: Sequence[str], granularity: str) -> list[str]:
    """The units products return to fp32 in, in graph order, named as ``--keep-fp32`` names
    them: each kind (``c_proj``), each block (``3``) or each product (``c_proj:3``)."""
    names = [product_choice(product) for product in products]
    if granularity == "product":
        return names
    part = 0 if granularity == "kind" else 1
    return list(dict.fromkeys(name.split(":")[part] for name in names))


@dataclass(frozen=True)
class Measurement:
    """One split scored on the data: the units in fp32, each category's AUROC change against
    fp32, and the final scores' mean absolute drift over every query."""

    fp32: tuple[str, ...]
    auroc_change: dict[str, float]
    score_drift: float

    @property
    def worst(self) -> tuple[str, float]:
        """The category whose AUROC changed most, and its change."""
        name = max(self.auroc_change, key=lambda c: abs(self.auroc_change[c]))
        return name, self.auroc_change[name]

    def holds(self, bound: float) -> bool:
        """Whether every category's AUROC changed by at most ``bound`` either way."""
        return all(auroc_within(change, bound) for change in self.auroc_change.values())

    def to_record(self) -> dict:
        changes = {name: round(change, 6) for name, change in self.auroc_change.items()}
        return {"fp32": list(self.fp32), "auroc_change": changes,
                "score_drift": self.score_drift}  # fmt: skip

    def describe(self) -> str:
        name, change = self.worst
        split = "every product int8" if not self.fp32 else f"fp32 {', '.join(self.fp32)}"
        drift = f"score drift {self.score_drift:.2e}"
        return f"{split}: worst AUROC change {change:+.4f} ({name}), {drift}"


def sensitivity_order(names: Sequence[str], alone: Sequence[Measurement]) -> list[str]:
    """The units most sensitive first: the least score drift with the unit alone in fp32;
    equal drifts in the units' own (graph) order."""
    ranked = sorted(range(len(names)), key=lambda i: (alone[i].score_drift, i))
    return [names[i] for i in ranked]


@dataclass
class Search:
    """What the search measured: every product int8 (``base``), each unit alone in fp32
    (``alone``, in the units' order; empty where ``base`` held), the splits it tried in order,
    and the one chosen (the last it tried)."""

    base: Measurement
    alone: list[Measurement] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    tried: list[Measurement] = field(default_factory=list)

    @property
    def chosen(self) -> Measurement:
        return self.tried[-1] if self.tried else self.base


def search_split(
    names: Sequence[str],
    measure: Callable[[tuple[str, ...]], Measurement],
    bound: float,
    log: Log = lambda message: None,
) -> Search:
    """Return units to fp32, most sensitive first (``sensitivity_order``), until ``measure``
    says every category holds ``bound``; ``Int8BringsNothing`` when only all of them would."""
    search = Search(measure(()))
    log(search.base.describe())
    if search.base.holds(bound):
        return search
    for name in names:
        search.alone.append(measure((name,)))
        log(f"ranking: {search.alone[-1].describe()}")
    search.order = sensitivity_order(names, search.alone)
    log(f"most sensitive first: {', '.join(search.order)}")
    for count in range(1, len(names)):
        split = tuple(search.order[:count])
        tried = search.alone[names.index(split[0])] if count == 1 else measure(split)
        search.tried.append(tried)
        if count > 1:
            log(tried.describe())
        if tried.holds(bound):
            return search
    name, change = search.tried[-1].worst if search.tried else search.base.worst
    raise Int8BringsNothing(
        f"int8 brings nothing for this model and data: only an all-fp32 encoder keeps every "
        f"category's AUROC change within {bound:g} (with one unit left int8, {name} changes "
        f"{change:+.4f}); export --precision fp32, or allow more with --max-auroc-change"
    )


class _Scorer:
    """Scores the accuracy data with any split: its pixels, prompts and PyTorch fp32 scores
    prepared once; each ``measure`` quantizes a split and runs it through the runtime with the
    fp32 bundle's head and priors."""

    def __init__(
        self, model: InCTRL, bundle: Path, control: AccuracyControl, quantizer: Int8Quantizer
    ) -> None:
        import torch

        from inctrl.metrics import image_metrics
        from inctrl_runtime.bundle import Bundle
        from inctrl_runtime.engines.ort import OrtEngine, place

        # The staged fp32 bundle's head and priors; its fp32 encoder is never run (PyTorch is
        # the reference), so it is not opened.
        self.bundle = Bundle.open(bundle, check_files=False)  # written a moment ago
        self.placement = place("cpu")
        self.head = OrtEngine.open(self.bundle.graphs["head"].file, self.placement)
        self.control, self.quantizer = control, quantizer
        self.candidate = quantizer.work / "candidate.onnx"
        self.pixels: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.reference: dict[str, np.ndarray] = {}
        self.fp32_auroc: dict[str, float] = {}
        digest = hashlib.sha256()
        for category in control.categories:
            prompts = preprocess_many(list(category.prompts), self.bundle.preprocessing)
            queries = preprocess_many(list(category.queries), self.bundle.preprocessing)
            for image in (*prompts, *queries):
                digest.update(image.tobytes())
            self.pixels[category.name] = prompts, queries
            bank = model.reference(torch.from_numpy(prompts), batch_size=_BATCH)
            scores = model.score(torch.from_numpy(queries), bank,
                                 model.text_prior(category.name), batch_size=_BATCH)  # fmt: skip
            self.reference[category.name] = np.asarray(scores.score.cpu(), np.float64)
            auroc, _ = image_metrics(category.labels, self.reference[category.name])
            self.fp32_auroc[category.name] = auroc
        self.data_digest = digest.hexdigest()

    def measure(self, fp32: tuple[str, ...]) -> Measurement:
        from inctrl.metrics import image_metrics
        from inctrl_runtime.detector import Detector
        from inctrl_runtime.engines.ort import OrtEngine

        self.quantizer.write(self.candidate, fp32)
        engine = OrtEngine.open(self.candidate, self.placement, precision="int8")
        detector = Detector(self.bundle, engine, self.head)
        changes, drifts = {}, []
        try:
            for category in self.control.categories:
                prompts, queries = self.pixels[category.name]
                bank = detector.reference(prompts, batch_size=_BATCH)
                found = detector.score_arrays(category.name, queries, bank=bank,
                                              batch_size=_BATCH).score  # fmt: skip
                auroc, _ = image_metrics(category.labels, found)
                changes[category.name] = auroc - self.fp32_auroc[category.name]
                drifts.append(np.abs(found - self.reference[category.name]))
        finally:
            engine.close()
        return Measurement(fp32, changes, float(np.concatenate(drifts).mean()))

    def close(self) -> None:
        self.head.close()


def controlled_int8(
    model: InCTRL,
    bundle: Path,
    encoder: Path,
    quantizer: Int8Quantizer,
    control: AccuracyControl,
    log: Log = lambda message: None,
) -> dict:
    """Choose the split for ``control`` (``search_split``) with the fp32 bundle in ``bundle``,
    write its int8 encoder to ``encoder`` (the bundle's), and return the quantization record: which
    products stayed fp32 and why, the data and every measured change."""
    began = time.perf_counter()
    scorer = _Scorer(model, bundle, control, quantizer)
    try:
        log(f"scored {control.images} labelled images of {len(control.categories)} categories "
            f"with PyTorch fp32 ({time.perf_counter() - began:.1f} s)")  # fmt: skip
        names = units(quantizer.products, control.granularity)
        search = search_split(names, scorer.measure, control.max_auroc_change, log)
    finally:
        scorer.close()
    chosen = search.chosen
    because = (
        f"accuracy control on {control.data.name}: every category's AUROC change within "
        f"{control.max_auroc_change:g}, {control.granularity}s returned most sensitive first"
        if chosen.fp32 else None
    )  # fmt: skip
    record = quantizer.write(encoder, chosen.fp32, because)
    record["accuracy_control"] = {
        "data": control.data.name,
        "data_digest": scorer.data_digest,
        "categories": {
            c.name: {"queries": len(c.queries), "defective": sum(c.labels)}
            for c in control.categories
        },  # fmt: skip
        "shots": control.shots,
        "prompt_seed": PROMPT_SEED,
        "reference": "PyTorch fp32",
        "max_auroc_change": control.max_auroc_change,
        "granularity": control.granularity,
        "fp32_auroc": {name: round(auroc, 6) for name, auroc in scorer.fp32_auroc.items()},
        "order": search.order,
        "ranking": [m.to_record() for m in search.alone],
        "every_product_int8": search.base.to_record(),
        "tried": [m.to_record() for m in search.tried],
        "fp32_units": list(chosen.fp32),
        "auroc_change": chosen.to_record()["auroc_change"],
        "seconds": round(time.perf_counter() - began, 1),
    }
    return record
