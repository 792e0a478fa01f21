"""Training samples as the authors draw them: balanced queries, k random normal prompts each.

torch-free: indices only. Each process owns one seeded ``random.Random``; its state and the
queue of the current pass are all there is to save for an exact resume.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from inctrl.data import by_category
from inctrl_runtime.datasets import ANOMALOUS, NORMAL, Sample
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import choose_prompts


@dataclass(frozen=True)
class TrainingSet:
    """What a run encodes and how queries and prompts index it.

    Attributes:
        images: distinct image paths; each is encoded once.
        categories: category names, in first-seen order.
        queries: per target (NORMAL, ANOMALOUS), (image, category) index pairs.
        pools: per category, the image indices of its normal images: where prompts come from.
    """

    images: tuple[str, ...]
    categories: tuple[str, ...]
    queries: dict[int, list[tuple[int, int]]]
    pools: list[list[int]]


def training_set(samples: Sequence[Sample], shots: int) -> TrainingSet:
    """Index samples for k-shot training, or say in one line why they cannot train.

    A category's pool is all its normal samples, whatever their split (as the authors'
    ``<name>_normal.json``: train/good and test/good). Repeated samples count once.
    """
    images: dict[str, int] = {}
    queries: dict[int, dict[tuple[int, int], None]] = {NORMAL: {}, ANOMALOUS: {}}
    groups = by_category(samples)
    pools = []
    for c, (category, group) in enumerate(groups.items()):
        for s in group:  # dict keys: ordered, without repeats (a source named twice)
            queries[s.target][images.setdefault(s.image_path, len(images)), c] = None
        pool = [image for image, owner in queries[NORMAL] if owner == c]
        if not pool:
            raise InputError(
                f"category {category!r} has no normal images to draw prompts from; add some "
                "(<category>/train/good or a <name>_normal.json list)"
            )
        if shots > len(pool):
            raise InputError(
                f"{shots} shots asked for, but category {category!r} has only {len(pool)} normal "
                "image(s) to draw them from; lower --shots or add normal images"
            )
        pools.append(pool)
    if not queries[ANOMALOUS]:
        raise InputError(
            "no anomalous images in the training data, and the loss needs both kinds; add "
            "<category>/test/<defect> folders or a <name>_outlier.json list"
        )
    return TrainingSet(
        tuple(images), tuple(groups), {t: list(q) for t, q in queries.items()}, pools
    )


class BalancedSampler:
    """Batches of half normal, half anomalous queries (the odd one anomalous), each class taken
    in a fresh random order pass after pass (the authors' ``BalancedBatchSampler``); for each
    query k prompts drawn without replacement from its category's pool, anew every time. The
    pool may hold the query itself, as in the authors' code."""

    def __init__(self, data: TrainingSet, batch_size: int, shots: int, seed: int) -> None:
        self.data, self.shots = data, shots
        self.sizes = {NORMAL: batch_size // 2, ANOMALOUS: batch_size - batch_size // 2}
        self.rng = random.Random(seed)
        self.pending: dict[int, list[int]] = {NORMAL: [], ANOMALOUS: []}

    def _next(self, target: int) -> tuple[int, int]:
        if not self.pending[target]:
            self.pending[target] = list(range(len(self.data.queries[target])))
            self.rng.shuffle(self.pending[target])
        return self.data.queries[target][self.pending[target].pop()]

    def batch(self) -> tuple[list[tuple[int, int]], list[list[int]], list[int]]:
        """Queries as (image, category), their k prompt images each, and their targets."""
        targets = [target for target, size in self.sizes.items() for _ in range(size)]
        queries = [self._next(target) for target in targets]
        prompts = [choose_prompts(self.data.pools[c], self.shots, self.rng) for _, c in queries]
        return queries, prompts, targets

    def state(self) -> tuple[tuple, dict[int, list[int]]]:
        """The generator's state and the rest of the current pass of each class."""
        return self.rng.getstate(), {t: list(q) for t, q in self.pending.items()}

    def set_state(self, rng_state: tuple, pending: dict[int, list[int]]) -> None:
        self.rng.setstate(rng_state)
        self.pending = {t: list(q) for t, q in pending.items()}
