"""From scores to decisions: split-conformal calibration on normal images (torch-free).

A category is calibrated with the scores of n normal images that were not its prompts. For a
query's score s, ``p_value = (1 + #{calibration scores >= s}) / (n + 1)``; calling a query
anomalous when ``p_value <= alpha`` flags a new normal image with probability at most alpha
(for exchangeable normals), whatever the model's quality. The same decision as a score
threshold is the ``ceil((n + 1)(1 - alpha))``-th smallest calibration score, which exists only
when ``n >= 1 / alpha - 1``.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inctrl_runtime.errors import InputError

DEFAULT_FPR = 0.01
# The operating points ``inctrl evaluate`` reports.
TARGET_FPRS = (0.01, 0.05, 0.1)


def check_fpr(alpha: float) -> float:
    """A false-positive rate must lie strictly between 0 and 1."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"--fpr must be a rate between 0 and 1 (e.g. 0.01), got {alpha}")
    return float(alpha)


def min_normals(alpha: float) -> int:
    """The fewest calibration images that give a threshold at false-positive rate ``alpha``."""
    return math.ceil(_rounded(1 / alpha - 1))


def _rounded(value: float) -> float:
    # (n + 1)(1 - alpha) is often a whole number computed with a rounding error (100 * 0.99).
    return round(value, 9)


def p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= s}) / (n + 1) for each score s; ``calibration`` sorted ascending."""
    n = len(calibration)
    at_least = n - np.searchsorted(calibration, np.asarray(scores), side="left")
    return (1 + at_least) / (n + 1)


def threshold(calibration: np.ndarray, alpha: float) -> float | None:
    """The ceil((n + 1)(1 - alpha))-th smallest calibration score, None when n is too small."""
    rank = math.ceil(_rounded((len(calibration) + 1) * (1 - alpha)))
    return float(calibration[rank - 1]) if 1 <= rank <= len(calibration) else None


class Decisions(NamedTuple):
    """Each query's p-value, and at the false-positive rate asked for the threshold and
    whether it is anomalous (both None when the calibration is too small for that rate)."""

    p_value: np.ndarray  # B
    threshold: float | None
    anomalous: np.ndarray | None  # B bool


def decide(calibration: np.ndarray, scores: np.ndarray, alpha: float = DEFAULT_FPR) -> Decisions:
    """p-values of ``scores``, and the threshold and decisions at rate ``alpha``, against the
    calibration scores ``calibration`` (sorted ascending)."""
    p = p_values(calibration, scores)
    cut = threshold(calibration, alpha)
    return Decisions(p, cut, None if cut is None else p <= alpha)


@dataclass(frozen=True)
class Calibration:
    """A category's calibration: the sorted scores of n normal images that were not prompts,
    with what scored them. It belongs to one reference bank and lives in its file.

    Attributes:
        scores: n float32, ascending.
        digests: sha256 of each calibration image's preprocessed pixels.
        backend: what scored them (e.g. ``onnxruntime-cpu``); precision: the encoder's.
        encoder_sha256: the encoder that scored them (the bank's).
        created: when, ISO 8601 UTC.
    """

    scores: np.ndarray
    digests: tuple[str, ...]
    backend: str
    precision: str
    encoder_sha256: str
    created: str

    @classmethod
    def of(
        cls,
        scores: np.ndarray,
        digests: Sequence[str],
        backend: str,
        precision: str,
        encoder_sha256: str,
    ) -> Calibration:
        """A calibration from unsorted scores, dated now."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        order = np.argsort(np.asarray(scores, dtype=np.float32), kind="stable")
        return cls(
            scores=np.asarray(scores, dtype=np.float32)[order],
            digests=tuple(digests[i] for i in order),
            backend=backend,
            precision=precision,
            encoder_sha256=encoder_sha256,
            created=now,
        )

    @property
    def n(self) -> int:
        return len(self.scores)

    def decide(self, scores: np.ndarray, alpha: float = DEFAULT_FPR) -> Decisions:
        """p-values of ``scores``, and the threshold and decisions at rate ``alpha``."""
        return decide(self.scores, scores, alpha)

    def too_small_for(self, alpha: float) -> str:
        """Why this calibration cannot decide at rate ``alpha`` ("" if it can)."""
        if self.n >= min_normals(alpha):
            return ""
        return (
            f"a false-positive rate of {alpha:g} needs at least {min_normals(alpha)} calibration "
            f"images, this category has {self.n}: calibrate with more normal images, or ask for "
            f"a rate of at least {1 / (self.n + 1):.3g}"
        )
