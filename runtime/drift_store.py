"""A category's drift monitor on disk, beside the bundle's banks, shared by every process.

    BUNDLE/monitors/<category>.log    append-only, a record per part: its score (float32) and
                                      the evidence after it (float64): 12 bytes a part
    BUNDLE/monitors/<category>.json   the snapshot: the bank it watches (its digest), the seed of
                                      the tie-breaks, the parts committed, the Simple Jumper's
                                      accounts and the largest evidence yet; written atomically
    BUNDLE/monitors/<category>.lock   held (``flock``) while a process adds parts

A process adds parts under the lock: it reads the snapshot, takes in the parts other processes
committed since it last looked (their scores, from the log), drops a tail no snapshot counts (a
process that died between its append and its snapshot), computes its own parts' p-values and
evidence, appends them and writes the snapshot. So parts are taken one at a time in one order
whatever the number of processes (``inctrl-run score`` runs, Triton model instances), and a
restarted process continues the same martingale. A part costs an append and a snapshot of a
few hundred bytes, never a rewrite of the history. A snapshot of another bank (registered or
calibrated anew) starts the monitor again; so does ``reset``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inctrl_runtime.drift import Drift, MonitorState, Ranks
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import write_json
from inctrl_runtime.references import NumpyBank

MONITORS_DIR = "monitors"
RECORD = np.dtype([("score", "<f4"), ("evidence", "<f8")])
SNAPSHOT_VERSION = 1


@dataclass(frozen=True)
class Status:
    """What a category's monitor has seen since its last reset."""

    category: str
    observed: int
    evidence: float
    peak: float
    peak_at: int  # the part after which the evidence was ``peak`` (0: none yet)
    calibration: int  # the calibration's n
    flagged: int  # the parts decided anomalous
    direction: str  # "up" or "down": the way the bet holding more capital wins (scores)

    @property
    def flag_rate(self) -> float | None:
        """The share of the parts seen that were decided anomalous (None: none seen)."""
        return self.flagged / self.observed if self.observed else None

    def alarm(self, delta: float) -> bool:
        return self.peak >= 1.0 / delta

    def record(self, delta: float) -> dict:
        return {
            "category": self.category,
            "observed": self.observed,
            "evidence": self.evidence,
            "alarm": self.alarm(delta),
            "delta": delta,
            "peak": self.peak,
            "peak_at": self.peak_at,
            "calibration": self.calibration,
            "flagged": self.flagged,
            "flag_rate": self.flag_rate,
            "direction": self.direction,
        }


class DriftMonitor:
    """The drift monitor of one calibrated category of a bundle (``bundle_path``): its state
    on disk (``monitors/``) against ``bank``'s calibration scores."""

    def __init__(self, bundle_path: str | os.PathLike, category: str, bank: NumpyBank) -> None:
        if bank.calibration is None:
            raise InputError(
                f"category {category!r} is not calibrated: the drift monitor ranks each part "
                f"against the calibration's scores; run inctrl-run calibrate first"
            )
        self.category = category
        self.bank = bank
        self.folder = Path(bundle_path) / MONITORS_DIR
        self.log = self.folder / f"{category}.log"
        self.snapshot_path = self.folder / f"{category}.json"
        self.lock_path = self.folder / f"{category}.lock"
        self.state: MonitorState | None = None  # this process's copy, caught up under the lock
        self.flagged = 0  # the parts decided anomalous (the committed count, under the lock)

    # ----------------------------------------------------------------------------- adding parts
    def take(
        self,
        scores: Sequence[float] | np.ndarray,
        delta: float,
        flagged: Sequence[bool] | None = None,
    ) -> list[Drift]:
        """Add parts' scores, in order, and how many of them were decided anomalous
        (``flagged``: each part's decision; None: undecided): each part's ``Drift`` at
        ``delta``."""
        scores = np.asarray(scores, dtype=np.float32)
        with self._locked():
            state = self._caught_up()
            drifts = state.take(scores, delta)
            self.flagged += sum(map(bool, flagged or ()))
            records = np.empty(len(scores), RECORD)
            records["score"] = scores
            records["evidence"] = [drift.evidence for drift in drifts]
            with open(self.log, "ab") as log:
                log.write(records.tobytes())
                log.flush()
                os.fsync(log.fileno())
            self._write_snapshot(state)
        return drifts

    def status(self) -> Status:
        """What the monitor has seen (nothing yet: observed 0, evidence 1)."""
        with self._locked():
            state = self._caught_up()
        up, _, down = state.capitals
        return Status(self.category, state.observed, state.evidence, state.peak, state.peak_at,
                      len(self.bank.calibration.scores), self.flagged,
                      "up" if up >= down else "down")  # fmt: skip

    def history(self) -> np.ndarray:
        """The committed parts' records (``RECORD``: score, evidence), in order."""
        with self._locked():
            state = self._caught_up()
            return np.fromfile(self.log, RECORD, count=state.observed) if state.observed else (
                np.empty(0, RECORD))  # fmt: skip

    def reset(self) -> None:
        """Start again: no part seen (after the line is fixed and recalibrated)."""
        with self._locked():
            self._start()

    # ------------------------------------------------------------------------------- the state
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.folder.mkdir(exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    @property
    def seed(self) -> int:
        """The tie-breaks' seed: a fixed function of the bank watched."""
        return int(self.bank.digest[:15], 16)

    def _start(self) -> MonitorState:
        """A monitor that has seen nothing, committed (an empty log, a fresh snapshot)."""
        self.state = MonitorState.start(self.bank.calibration.scores, self.seed)
        self.flagged = 0
        with open(self.log, "wb"):
            pass
        self._write_snapshot(self.state)
        return self.state

    def _caught_up(self) -> MonitorState:
        """This process's state made the committed one (under the lock): read anew where the
        snapshot watches another bank or is missing (then started again), the other
        processes' parts taken in, an uncommitted tail of the log cut off."""
        snapshot = self._read_snapshot()
        if snapshot is None or snapshot["bank"] != self.bank.digest:
            return self._start()
        observed = int(snapshot["observed"])
        state = self.state
        if state is None or state.observed > observed or state.seed != snapshot["seed"]:
            state = MonitorState(Ranks(self.bank.calibration.scores), int(snapshot["seed"]))
        if state.observed < observed:
            with open(self.log, "rb") as log:
                log.seek(state.observed * RECORD.itemsize)
                new = np.fromfile(log, RECORD, count=observed - state.observed)
            if len(new) != observed - state.observed:
                raise InputError(
                    f"{self.log}: holds {state.observed + len(new)} parts, its snapshot "
                    f"{observed}; start the monitor again with inctrl-run monitor --reset"
                )
            state.ranks.add(new["score"].astype(np.float64))
        state.observed = observed
        state.capitals = np.asarray(snapshot["capitals"], dtype=np.float64)
        state.peak, state.peak_at = float(snapshot["peak"]), int(snapshot["peak_at"])
        self.flagged = int(snapshot["flagged"])
        if self.log.stat().st_size > observed * RECORD.itemsize:
            os.truncate(self.log, observed * RECORD.itemsize)  # appended, never committed
        self.state = state
        return state

    def _read_snapshot(self) -> dict | None:
        try:
            snapshot = json.loads(self.snapshot_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise InputError(
                f"{self.snapshot_path}: not a drift monitor snapshot ({err}); start it again "
                "with inctrl-run monitor --reset"
            ) from None
        if snapshot.get("version") != SNAPSHOT_VERSION or not self.log.is_file():
            return None
        return snapshot

    def _write_snapshot(self, state: MonitorState) -> None:
        write_json(self.snapshot_path, {
            "version": SNAPSHOT_VERSION,
            "category": self.category,
            "bank": self.bank.digest,
            "seed": state.seed,
            "observed": state.observed,
            "capitals": [float(c) for c in state.capitals],
            "peak": state.peak,
            "peak_at": state.peak_at,
            "flagged": self.flagged,
        })  # fmt: skip
