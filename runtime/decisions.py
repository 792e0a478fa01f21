"""From scores to decisions: split-conformal calibration on normal images (torch-free).

A category is calibrated with the scores of n normal images that were not its prompts. For a
query's score s, ``p_value = (1 + #{calibration scores >= s - TIE_TOLERANCE}) / (n + 1)``;
calling a query anomalous when ``p_value <= alpha`` flags a new normal image with probability
at most alpha (for exchangeable normals), whatever the model's quality. The same decision as a
score threshold: anomalous above the ``ceil((n + 1)(1 - alpha))``-th smallest calibration
score plus ``TIE_TOLERANCE``, which exists only when ``n >= 1 / alpha - 1``.

A calibration score within ``TIE_TOLERANCE`` below s counts as at least as large: a backend's
scores of one image differ by batch (the parity contract allows 1e-5), so a re-scored
calibration image gets the same p-value and decision at every batch size. Counting more
calibration scores only raises p-values, so the rate promise holds (docs/decisions.md).
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from inctrl_runtime.errors import InputError

DEFAULT_FPR = 0.01
# The operating points ``inctrl evaluate`` reports.
TARGET_FPRS = (0.01, 0.05, 0.1)
# A query's decision fields, in the order records carry them.
DECISION_FIELDS = ("p_value", "threshold", "anomalous")
P_VALUE, THRESHOLD, ANOMALOUS = DECISION_FIELDS
# How close below a query's score a calibration score still counts as "at least as large": the
# parity contract's batch invariance (a score may move this much with the batch it is in).
TIE_TOLERANCE = 1e-5


def check_fpr(alpha: float, option: str = "--fpr") -> float:
    """A false-positive rate (given as ``option``) must lie strictly between 0 and 1."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise InputError(f"{option} must be a rate between 0 and 1 (e.g. 0.01), got {alpha}")
    return float(alpha)


def min_normals(alpha: float) -> int:
    """The fewest calibration images that give a threshold at false-positive rate ``alpha``."""
    return math.ceil(_rounded(1 / alpha - 1))


def _rounded(value: float) -> float:
    # (n + 1)(1 - alpha) is often a whole number computed with a rounding error (100 * 0.99).
    return round(value, 9)


def p_values(calibration: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(1 + #{calibration >= s - TIE_TOLERANCE}) / (n + 1) for each score s; ``calibration``
    sorted ascending."""
    n = len(calibration)
    lowered = np.asarray(scores, dtype=np.float64) - TIE_TOLERANCE
    at_least = n - np.searchsorted(np.asarray(calibration, np.float64), lowered, side="left")
    return (1 + at_least) / (n + 1)


def threshold(calibration: np.ndarray, alpha: float) -> float | None:
    """The score above which a query is anomalous at rate ``alpha``: the ceil((n + 1)(1 -
    alpha))-th smallest calibration score plus ``TIE_TOLERANCE``; None when n is too small."""
    rank = math.ceil(_rounded((len(calibration) + 1) * (1 - alpha)))
    if not 1 <= rank <= len(calibration):
        return None
    return float(calibration[rank - 1]) + TIE_TOLERANCE


class CalibrationWarning(UserWarning):
    """Decisions are made with a calibration that does not quite fit the call."""


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
        map_maxima: n float32, ascending: each image's ``max_patch_residual``, whose order
            statistic is the region threshold (``regions.RegionRule``); None for a
            calibration made before regions were kept.
    """

    scores: np.ndarray
    digests: tuple[str, ...]
    backend: str
    precision: str
    encoder_sha256: str
    created: str
    map_maxima: np.ndarray | None = None

    @classmethod
    def of(
        cls,
        scores: np.ndarray,
        digests: Sequence[str],
        backend: str,
        precision: str,
        encoder_sha256: str,
        map_maxima: np.ndarray | None = None,
    ) -> Calibration:
        """A calibration from unsorted scores (and the same images' map maxima, sorted on
        their own), dated now."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        order = np.argsort(np.asarray(scores, dtype=np.float32), kind="stable")
        return cls(
            scores=np.asarray(scores, dtype=np.float32)[order],
            digests=tuple(digests[i] for i in order),
            backend=backend,
            precision=precision,
            encoder_sha256=encoder_sha256,
            created=now,
            map_maxima=None if map_maxima is None else np.sort(np.asarray(map_maxima, np.float32)),
        )

    @property
    def n(self) -> int:
        return len(self.scores)

    def decide(self, scores: np.ndarray, alpha: float = DEFAULT_FPR) -> Decisions:
        """p-values of ``scores``, and the threshold and decisions at rate ``alpha``."""
        return decide(self.scores, scores, alpha)

    def misfits(
        self, backend: str, precision: str, alpha: float, region_alpha: float | None = None
    ) -> list[str]:
        """Why decisions at rate ``alpha`` (and regions at ``region_alpha``; None: none asked)
        on ``backend`` at ``precision`` are not exactly what this calibration promises (none:
        they are): another backend at the same precision scored it, it is too small for a rate
        (p-values are still given), or it keeps no map maxima (no regions). A calibration of
        another precision gives no decisions at all (``other_precision``)."""
        found = []
        if self.precision == precision and self.backend != backend:
            found.append(
                f"the calibration was scored with {self.backend} {self.precision}, this is "
                f"{backend} {precision}: scores may differ slightly, so may the false-positive "
                "rate; calibrate again on this backend to be exact"
            )
        found.append(self.too_small_for(alpha))
        if region_alpha is not None and self.map_maxima is None:
            found.append(
                "the calibration keeps no map maxima (made before regions were): no regions; "
                "calibrate again (inctrl-run calibrate) to get them"
            )
        elif region_alpha is not None and region_alpha != alpha:
            found.append(self.too_small_for(region_alpha, "region false-positive rate"))
        return [line for line in found if line]

    def other_precision(self, precision: str) -> str:
        """Why this calibration gives no decisions for an encoder at ``precision`` ("" if it
        does): one made at another precision scored another model, in effect (an int8 encoder
        ranks parts a little differently), so its rate would not hold."""
        if self.precision == precision:
            return ""
        return (
            f"the calibration was made at {self.precision}, this encoder runs {precision}: no "
            f"p-values or decisions; run inctrl-run calibrate again to decide at {precision}"
        )

    def too_small_for(self, alpha: float, rate: str = "false-positive rate") -> str:
        """Why this calibration cannot decide at rate ``alpha`` ("" if it can)."""
        if self.n >= min_normals(alpha):
            return ""
        return (
            f"a {rate} of {alpha:g} needs at least {min_normals(alpha)} calibration "
            f"images, this category has {self.n}: calibrate with more normal images, or ask for "
            f"a rate of at least {1 / (self.n + 1):.3g}"
        )


# The decision fields' one codec. A record says "no decision" with None: p_value, threshold and
# anomalous all None for an uncalibrated category (or prompts given for the call), threshold and
# anomalous None for a calibration too small for the rate asked. Arrays (a served answer) cannot
# hold None: they say it with NaN (p_value, threshold) and false (anomalous).


def decision_arrays(
    calibration: Calibration | None,
    scores: np.ndarray,
    alpha: float,
    dtype: type = np.float32,
) -> dict[str, np.ndarray]:
    """p_value, threshold and anomalous for B scores as arrays: NaN, NaN and false where a
    record says None (``decoded_decision`` reads them back)."""
    count = len(scores)
    arrays = {
        P_VALUE: np.full(count, np.nan, dtype),
        THRESHOLD: np.full(count, np.nan, dtype),
        ANOMALOUS: np.zeros(count, bool),
    }
    if calibration is not None:
        decisions = calibration.decide(scores, alpha)
        arrays[P_VALUE][:] = decisions.p_value
        if decisions.anomalous is not None:
            arrays[THRESHOLD][:] = decisions.threshold
            arrays[ANOMALOUS][:] = decisions.anomalous
    return arrays


def decoded_decision(arrays: Mapping[str, np.ndarray], row: int) -> dict:
    """One query's decision fields as a record holds them, from ``decision_arrays`` (or a
    served answer's arrays of the same names): None where the arrays say NaN."""
    p_value, threshold = (float(np.ravel(arrays[name])[row]) for name in (P_VALUE, THRESHOLD))
    fields = dict.fromkeys(DECISION_FIELDS)
    if not math.isnan(p_value):
        fields[P_VALUE] = p_value
        if not math.isnan(threshold):
            fields[THRESHOLD] = threshold
            fields[ANOMALOUS] = bool(np.ravel(arrays[ANOMALOUS])[row])
    return fields


def decision_fields(
    calibration: Calibration | None, scores: np.ndarray, alpha: float
) -> list[dict]:
    """Each query's decision fields as records carry them (None where there is no decision):
    ``decision_arrays`` in float64, read back by ``decoded_decision``."""
    arrays = decision_arrays(calibration, scores, alpha, np.float64)
    return [decoded_decision(arrays, row) for row in range(len(scores))]
