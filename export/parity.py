"""Parity of a bundle with PyTorch: the export's self-check and ``inctrl-export verify``.

Both sides get the same images; each builds its own reference bank from the prompt images and
scores the queries. Per output we report the max abs and max relative difference and the
smallest tolerance that would pass (Polygraphy's "minimum required tolerance"), plus the rank
agreement of the scores, AUROC on both sides when labels are known, and the runtime's batch
invariance (docs/model.md, "Numerical parity").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from inctrl.model import InCTRL
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import ImageSource
from inctrl_runtime.results import SCORE_FIELDS

# The contract, max abs difference from inctrl fp32: fp32 1e-4 and fp16 5e-3 on every head
# output and the text prior. An int8 encoder is a slightly different model: its outputs' drift
# is reported, not judged (JUDGED: none), and it is judged by what a user must keep, the
# ranking of parts: its AUROC change on labelled images. Without labelled images nothing of an
# int8 bundle is judged, and the report says how to judge it.
DEFAULT_ATOL = {"fp32": 1e-4, "fp16": 5e-3, "int8": 1e-2}
JUDGED: dict[str, tuple[str, ...]] = {"int8": ()}  # precision -> the judged outputs; others:
# all but INTERMEDIATES
# The most the image AUROC may change on labelled images: one query pair in a hundred ordered
# the other way (a rise is as much another ranking as a fall). Judged for int8 only: the float
# precisions' marks on every score already keep their AUROC where PyTorch's is (reported).
AUROC_MARKS = {"int8": 0.01}
# An AUROC change is a difference of two fractions: a change of exactly the mark (a swapped pair
# among 100) may come out a rounding error above it.
_AUROC_ROUNDING = 1e-12
# Relative differences are taken against max(|reference|, this), so exact zeros do not blow up.
_REL_FLOOR = 1e-6
# The reference bank's values, shown to explain score differences; the contract judges the
# head's outputs (and the text prior, which must be the torch side's exactly).
INTERMEDIATES = ("bank.patches", "bank.adapted_mean")
# Queries scored one at a time as well, to measure the runtime's batch invariance.
_BATCH_CHECK = 4


def auroc_within(change: float, mark: float) -> bool:
    """Whether an AUROC change is at most ``mark`` either way (up to the rounding of its
    fractions)."""
    return abs(change) <= mark + _AUROC_ROUNDING


def pass_mark(atol: float | None, precision: str) -> float:
    """The max abs difference an output may have: ``atol``, or the contract's for
    ``precision``; a mark that is negative or not a finite number is refused."""
    if atol is None:
        return DEFAULT_ATOL[precision]
    if not math.isfinite(atol) or atol < 0:
        raise InputError(f"--atol must be a finite number of at least 0, got {atol}")
    return float(atol)


@dataclass(frozen=True)
class OutputDiff:
    """How far one output of the bundle is from PyTorch's."""

    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel: float
    passes: bool
    judged: bool = True  # False: an intermediate shown to explain the scores, not judged

    @property
    def tolerance_to_pass(self) -> float:
        """The smallest absolute tolerance under which this output would pass."""
        return self.max_abs


@dataclass
class ParityReport:
    """The comparison of one bundle with PyTorch on one set of images."""

    precision: str
    category: str
    shots: int
    queries: int
    batch_size: int
    atol: float
    backend: str  # what ran the bundle's graphs: an engine's ``backend``, e.g. onnxruntime-cpu
    outputs: list[OutputDiff] = field(default_factory=list)
    rank: dict[str, float] | None = None
    auroc: dict[str, float] | None = None
    auroc_mark: float | None = None  # the most the AUROC change may be (None: not judged)
    batch_invariance: float | None = None

    @property
    def passed(self) -> bool:
        return all(diff.passes for diff in self.outputs if diff.judged) and self.auroc_holds

    @property
    def auroc_holds(self) -> bool:
        """Whether the AUROC change is within its mark (True where none is judged)."""
        if self.auroc is None or self.auroc_mark is None:
            return True
        return auroc_within(self.auroc["change"], self.auroc_mark)

    @property
    def max_abs_diff(self) -> float:
        """The largest difference among the judged outputs (the head's); where none is judged
        (int8), the final score's drift."""
        judged = [diff for diff in self.outputs if diff.judged]
        shown = judged or [diff for diff in self.outputs if diff.name == "score"]
        return max(diff.max_abs for diff in shown)

    @property
    def judges(self) -> str:
        """What the verdict rests on: ``outputs`` (their differences), ``auroc`` (int8 with
        labelled images: its AUROC change) or ``nothing`` (int8 without them)."""
        if any(diff.judged for diff in self.outputs):
            return "outputs"
        return "auroc" if self.auroc is not None and self.auroc_mark is not None else "nothing"

    def to_dict(self) -> dict:
        """The summary stored in the manifest and written by ``--json``."""
        record = asdict(self)
        record["outputs"] = [
            {**asdict(d), "shape": list(d.shape), "tolerance_to_pass": d.tolerance_to_pass}
            for d in self.outputs
        ]
        return {"passed": self.passed, "judges": self.judges, "max_abs_diff": self.max_abs_diff,
                **record}  # fmt: skip

    def table(self):
        """A rich renderable: one table row per output, then rank agreement, AUROC, batch
        invariance and the verdict as lines below."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        table = Table(
            title=(
                f"{self.backend} ({self.precision}) vs PyTorch fp32: category {self.category!r}, "
                f"k={self.shots}, {self.queries} queries, batch {self.batch_size}"
            )
        )
        table.add_column("output", no_wrap=True)
        for header in ("shape", "max abs", "max rel", "atol to pass", "ok"):
            table.add_column(header, justify="right", no_wrap=True)
        for d in self.outputs:
            mark = ("[green]yes[/]" if d.passes else "[red]NO[/]") if d.judged else "-"
            shape = "x".join(map(str, d.shape))
            table.add_row(d.name, shape, f"{d.max_abs:.2e}", f"{d.max_rel:.2e}",
                          f"{d.tolerance_to_pass:.2e}", mark)  # fmt: skip
        lines = []
        if self.batch_invariance is not None:
            lines.append(f"score, batch vs one at a time: max abs {self.batch_invariance:.2e}")
        if self.rank is not None:
            lines.append("rank agreement of scores: " + ", ".join(
                f"{k.replace('_', ' ')} {v:.4f}" for k, v in self.rank.items()))  # fmt: skip
        if self.auroc is not None:
            line = (
                f"image AUROC: pytorch {self.auroc['pytorch']:.4f}, bundle "
                f"{self.auroc['bundle']:.4f}, change {self.auroc['change']:+.4f}"
            )
            if self.auroc_mark is not None:
                verdict = "within" if self.auroc_holds else "PAST"
                line += f" ({verdict} the mark {self.auroc_mark:g})"
            lines.append(line)
        if self.judges == "nothing":
            lines.append(
                f"{self.precision} is judged by its AUROC change on labelled images (at most "
                f"{AUROC_MARKS[self.precision]:g}), and none were given: nothing is judged; check "
                "it with inctrl-export verify BUNDLE --images LABELLED_CATEGORY_DIR"
            )
            lines.append(f"score drift: max abs {self.max_abs_diff:.2e} (reported)")
            return Group(table, *(Text(line) for line in lines))
        if self.judges == "auroc":
            lines.append(f"the {self.precision} contract judges the AUROC change; the outputs' "
                         "drift is reported")  # fmt: skip
            verdict = "PASSED" if self.passed else "FAILED"
            lines.append(f"parity {verdict}: AUROC change {self.auroc['change']:+.4f}, mark "
                         f"{self.auroc_mark:g}; score drift {self.max_abs_diff:.2e}")  # fmt: skip
            return Group(table, *(Text(line) for line in lines))
        verdict = "PASSED" if self.passed else "FAILED"
        lines.append(f"parity {verdict}: max abs diff {self.max_abs_diff:.2e}, atol {self.atol:g}")
        return Group(table, *(Text(line) for line in lines))


def compare(
    model: InCTRL,
    detector: Detector,
    category: str,
    prompts: Sequence[ImageSource],
    queries: Sequence[ImageSource],
    atol: float,
    batch_size: int = 16,
    labels: Sequence[int] | None = None,
) -> ParityReport:
    """Score the same queries with PyTorch and the bundle and compare every output.

    Queries are decoded and preprocessed once, by the one preprocessing both sides share
    (its parity with torchvision is tested on its own); each side encodes its own prompts.
    """
    import torch

    pixels = detector.pixels(queries)
    torch_bank = model.reference(list(prompts))
    torch_prior = model.text_prior(category)
    torch_scores = model.score(
        torch.from_numpy(pixels), torch_bank, torch_prior, batch_size=batch_size
    )
    bank = detector.reference(prompts)
    scores = detector.score_arrays(category, pixels, bank=bank, batch_size=batch_size)

    pairs = {
        "bank.patches": (bank.patches, torch_bank.patches),
        "bank.adapted_mean": (bank.adapted_mean, torch_bank.adapted_mean),
        "text_prior": (detector.bundle.prior(category), torch_prior.matrix()),
        **{name: (getattr(scores, name), getattr(torch_scores, name)) for name in SCORE_FIELDS},
    }
    precision = detector.bundle.graphs["encoder"].precision
    judged = JUDGED.get(precision, tuple(name for name in pairs if name not in INTERMEDIATES))
    report = ParityReport(
        precision=precision,
        category=category,
        shots=len(prompts),
        queries=len(queries),
        batch_size=batch_size,
        atol=atol,
        backend=detector.encoder_engine.backend,
        outputs=[
            _diff(name, ours, np.asarray(ref.cpu()), atol, judged=name in judged)
            for name, (ours, ref) in pairs.items()
        ],
    )
    reference = np.asarray(torch_scores.score.cpu(), dtype=np.float64)
    if len(queries) > 1:
        report.rank = rank_agreement(scores.score, reference)
    if labels is not None and 0 < sum(labels) < len(labels):
        report.auroc = _auroc_change(labels, reference, scores.score)
        report.auroc_mark = AUROC_MARKS.get(precision)
    few = pixels[:_BATCH_CHECK]
    one_by_one = detector.score_arrays(category, few, bank=bank, batch_size=1).score
    report.batch_invariance = float(np.abs(one_by_one - scores.score[: len(few)]).max())
    return report


def _diff(
    name: str, ours: np.ndarray, reference: np.ndarray, atol: float, judged: bool
) -> OutputDiff:
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    if ours.shape != reference.shape:
        return OutputDiff(name, ours.shape, float("inf"), float("inf"), False, judged)
    error = np.abs(ours - reference)
    relative = error / np.maximum(np.abs(reference), _REL_FLOOR)
    max_abs = float(error.max(initial=0.0))
    max_rel = float(relative.max(initial=0.0))
    return OutputDiff(name, ours.shape, max_abs, max_rel, max_abs <= atol, judged)


def rank_agreement(scores: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Spearman's rho and Kendall's tau-b between two score lists (ties as scipy.stats treats
    them), and the fraction of query pairs they order alike."""
    a, b = np.asarray(scores, np.float64), np.asarray(reference, np.float64)
    upper = np.triu_indices(len(a), k=1)
    sign_a = np.sign(a[:, None] - a[None, :])[upper]
    sign_b = np.sign(b[:, None] - b[None, :])[upper]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        spearman = kendall_tau = 1.0
    else:
        spearman = float(np.corrcoef(average_ranks(a), average_ranks(b))[0, 1])
        tied_apart = np.count_nonzero(sign_a) * np.count_nonzero(sign_b)
        kendall_tau = float((sign_a * sign_b).sum() / np.sqrt(tied_apart))
    return {
        "spearman": spearman,
        "kendall_tau": kendall_tau,
        "same_order": float((sign_a * sign_b >= 0).mean()),
    }


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values sharing the mean of their positions (Spearman's ranks)."""
    ordered = np.sort(values)
    below = np.searchsorted(ordered, values, side="left")
    up_to = np.searchsorted(ordered, values, side="right")
    return (below + 1 + up_to) / 2.0


def _auroc_change(
    labels: Sequence[int], reference: np.ndarray, scores: np.ndarray
) -> dict[str, float]:
    from inctrl.metrics import image_metrics

    torch_auroc, _ = image_metrics(labels, reference)
    bundle_auroc, _ = image_metrics(labels, scores)
    return {"pytorch": torch_auroc, "bundle": bundle_auroc, "change": bundle_auroc - torch_auroc}
