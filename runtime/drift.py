"""The drift monitor's arithmetic: online conformal p-values and a conformal test martingale.

The null hypothesis is that a category's calibration scores and the scores of the stream of
parts scored after them, in order, are exchangeable. Under it, the online conformal p-value of
stream part n,

    p_n = (#{earlier scores > s_n} + theta_n * (#{earlier scores = s_n} + 1)) / (N_n + 1),

where the earlier scores are the m calibration scores and the stream's first n - 1 (N_n = m + n
- 1 of them) and theta_n is uniform on [0, 1), are independent and uniform on [0, 1]: the
smoothed conformal p-values of an exchangeable sequence are (Vovk, Gammerman and Shafer,
"Algorithmic Learning in a Random World", 2005, theorem 8.2), and the stream's are a
subsequence of the whole sequence's. A small p-value is a score larger than usual.

The p-values feed Vovk's Simple Jumper, a test martingale: three accounts bet with
f_e(p) = 1 + e (p - 1/2) for e = -1 (scores drifting up), 0 (no bet) and +1 (scores drifting
down, parts that look "more normal" than the calibration); before each part a share ``JUMP`` of
the total capital is spread evenly over the accounts again, so that an account ruined by a long
in-control period is restocked and reacts to a change that comes late. Each f_e integrates to 1
over [0, 1], so under the null the total S_n (the evidence, S_0 = 1) is a nonnegative martingale
of mean 1, and Ville's inequality gives P(S_n >= 1 / delta for some n) <= delta over the whole,
unbounded stream: the alarm's false-alarm probability. docs/drift.md has the proof.

Everything here is pure numpy and in memory; ``inctrl_runtime.drift_store`` keeps it on disk.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inctrl_runtime.errors import InputError

JUMP = 0.01  # the Simple Jumper's jumping rate J
BETS = np.array([-1.0, 0.0, 1.0])  # e of each account: drifting up, no bet, drifting down
DEFAULT_DELTA = 0.01  # the false-alarm probability of an alarm at evidence 1 / delta
_MERGE = 1024  # recent scores kept unsorted before they join the sorted history
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def check_delta(delta: float) -> float:
    """A false-alarm probability in (0, 1): refused in one line otherwise."""
    if not isinstance(delta, (int, float)) or not 0.0 < delta < 1.0 or math.isnan(delta):
        raise InputError(f"--drift-delta must be a probability in (0, 1), got {delta!r}")
    return float(delta)


def tie_breaks(seed: int, first: int, count: int) -> np.ndarray:
    """theta_n for parts ``first`` .. ``first + count - 1``: uniform on [0, 1), a fixed function
    of (seed, n) (splitmix64), so a stream gets the same draws however it is split across calls,
    processes and restarts."""
    with np.errstate(over="ignore"):
        x = np.uint64(seed) + (np.arange(first, first + count, dtype=np.uint64) + 1) * _GOLDEN
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53


class Ranks:
    """The scores seen so far (the calibration's, then the stream's), for online p-values: a
    sorted array and a short unsorted tail that joins it every ``_MERGE`` scores, so that adding
    a score costs a few microseconds, not a sort."""

    def __init__(self, scores: Sequence[float] | np.ndarray = ()) -> None:
        self.sorted = np.sort(np.asarray(scores, dtype=np.float64))
        self.recent = np.empty(_MERGE)
        self.count = 0  # scores in ``recent``

    def __len__(self) -> int:
        return len(self.sorted) + self.count

    def p_value(self, score: float, theta: float) -> float:
        """The smoothed conformal p-value of ``score`` against the scores held, which it then
        joins."""
        low = int(self.sorted.searchsorted(score, "left"))
        high = int(self.sorted.searchsorted(score, "right"))
        greater, equal = len(self.sorted) - high, high - low
        if self.count:
            tail = self.recent[: self.count]
            greater += int(np.count_nonzero(tail > score))
            equal += int(np.count_nonzero(tail == score))
        p = (greater + theta * (equal + 1)) / (len(self) + 1)
        self.add((score,))
        return p

    def add(self, scores: Sequence[float] | np.ndarray) -> None:
        """Scores that join the history without a p-value (another process's, read back)."""
        if len(scores) >= _MERGE:  # many at once: one merge
            self._merge(np.concatenate([self.recent[: self.count], scores]))
            return
        for score in scores:
            self.recent[self.count] = score
            self.count += 1
            if self.count == _MERGE:
                self._merge(self.recent)

    def _merge(self, scores: np.ndarray) -> None:
        """``scores`` into the sorted array (a merge: linear in the history, no sort of it),
        the tail emptied."""
        tail = np.sort(np.asarray(scores, dtype=np.float64))
        self.sorted = np.insert(self.sorted, self.sorted.searchsorted(tail), tail)
        self.count = 0


@dataclass(frozen=True)
class Drift:
    """What a record says of the monitor after its part: the evidence against exchangeability
    (the martingale's value), whether it ever reached 1 / delta since the last reset (the
    alarm: once raised it stays until a reset), and the parts seen since that reset."""

    evidence: float
    alarm: bool
    observed: int

    def record(self) -> dict:
        return {"evidence": self.evidence, "alarm": self.alarm, "observed": self.observed}


@dataclass
class MonitorState:
    """A category's monitor: the calibration's and the stream's scores, the Simple Jumper's
    accounts, the parts seen, and the largest evidence yet (``peak``, first reached after part
    ``peak_at``), from which an alarm at any delta is read."""

    ranks: Ranks
    seed: int
    observed: int = 0
    capitals: np.ndarray | None = None
    peak: float = 1.0
    peak_at: int = 0

    def __post_init__(self) -> None:
        if self.capitals is None:
            self.capitals = np.full(len(BETS), 1.0 / len(BETS))

    @classmethod
    def start(cls, calibration: Sequence[float] | np.ndarray, seed: int) -> MonitorState:
        """A monitor that has seen no part yet, against ``calibration``'s scores."""
        return cls(Ranks(calibration), seed)

    @property
    def evidence(self) -> float:
        return float(self.capitals.sum())

    def alarm(self, delta: float) -> bool:
        """Whether the evidence ever reached 1 / delta since the last reset."""
        return self.peak >= 1.0 / delta

    def observe(self, scores: Sequence[float] | np.ndarray) -> np.ndarray:
        """Take parts' scores in order: each one's evidence after it (float64)."""
        thetas = tie_breaks(self.seed, self.observed, len(scores)).tolist()
        pairs = zip(np.asarray(scores).tolist(), thetas, strict=True)
        return self.bet([self.ranks.p_value(score, theta) for score, theta in pairs])

    def bet(self, p_values: Sequence[float]) -> np.ndarray:
        """The Simple Jumper on the next parts' p-values: each one's evidence after it."""
        evidence = np.empty(len(p_values))
        up, still, down = (float(c) for c in self.capitals)  # the accounts of BETS
        for index, p in enumerate(p_values):
            bet = p - 0.5
            share = JUMP * (up + still + down) / 3.0
            up = ((1.0 - JUMP) * up + share) * (1.0 - bet)
            still = (1.0 - JUMP) * still + share
            down = ((1.0 - JUMP) * down + share) * (1.0 + bet)
            evidence[index] = total = up + still + down
            if total > self.peak:
                self.peak, self.peak_at = total, self.observed + index + 1
        self.capitals = np.array([up, still, down])
        self.observed += len(p_values)
        return evidence

    def take(self, scores: Sequence[float] | np.ndarray, delta: float) -> list[Drift]:
        """``observe`` the parts' scores, and each part's ``Drift`` at ``delta``: alarmed from
        the first part whose evidence reached 1 / delta, or from the start where an earlier
        part's had."""
        raised = self.alarm(delta)
        first = self.observed + 1
        drifts = []
        for offset, value in enumerate(self.observe(scores)):
            raised = raised or bool(value >= 1.0 / delta)
            drifts.append(Drift(float(value), raised, first + offset))
        return drifts
