"""``inctrl evaluate --report``: the inspection report of an evaluation, a section per category
showing its first run (the first seed's prompt draw): the run's test images, scored and decided
at ``REPORT_FPR`` against that run's calibration, as ``inctrl-run score --report`` shows a run,
with the labels' ROC, confusion matrix and recall per defect type.

The pictures are decoded again, a batch at a time, once the category's runs are scored: the
report holds none of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from inctrl_runtime.decisions import Calibration, decision_fields, threshold
from inctrl_runtime.preprocess import Preprocessing, decode, load_image, thumbnail
from inctrl_runtime.regions import region_rule
from inctrl_runtime.report import CARD_SIZE, Header, ReportWriter, card_of, png
from inctrl_runtime.results import Scores, to_results
from inctrl_runtime.tiling import Tiling

# The rate the report's decisions and regions are made at (the largest of the evaluation's).
REPORT_FPR = 0.1


@dataclass(frozen=True)
class FirstRun:
    """What a category's first run leaves for its report section: the test images with their
    labels ("good" or the defect type), their scores (frames', for tiles), the prompts, the
    run's calibration (sorted scores and map maxima; None: none) and, for tiles, each frame's
    deciding view (``frame_scores``'s)."""

    category: str
    images: Sequence[str]
    labels: Sequence[str]
    scores: Scores
    prompts: Sequence[str]
    calibration: tuple[np.ndarray, np.ndarray] | None
    decisive: np.ndarray | None = None


class EvaluationGallery:
    """Adds a section per category to ``writer`` (``add``), its images decoded a batch at a
    time with ``preprocessing`` (and ``tiling``)."""

    def __init__(
        self,
        writer: ReportWriter,
        preprocessing: Preprocessing,
        tiling: Tiling | None = None,
        batch_size: int = 16,
    ) -> None:
        self.writer = writer
        self.preprocessing = preprocessing
        self.tiling = tiling
        self.batch_size = batch_size

    def add(self, run: FirstRun) -> None:
        calibration = None
        if run.calibration is not None and len(run.calibration[0]):
            scores, maxima = run.calibration
            calibration = Calibration.of(scores, [""] * len(scores), "torch", "fp32", "",
                                         map_maxima=maxima)  # fmt: skip
        self.writer.section(_header(run, calibration))
        decisions = None
        rule = None
        if calibration is not None and threshold(calibration.scores, REPORT_FPR) is not None:
            decisions = decision_fields(calibration, run.scores.score, REPORT_FPR)
            rule = region_rule(calibration, REPORT_FPR)
        for start in range(0, len(run.images), self.batch_size):
            rows = slice(start, start + self.batch_size)
            names = list(run.images[rows])
            decoded = [decode(name, self.preprocessing, CARD_SIZE, self.tiling)
                       for name in names]  # fmt: skip
            part = Scores(*(np.asarray(field)[rows] for field in run.scores))
            decisive = None if run.decisive is None else run.decisive[rows]
            results = to_results(
                names, part, self.preprocessing,
                None if decisions is None else decisions[rows], rule,
                frames=[image.frame for image in decoded],
                pictures=[image.picture for image in decoded],
                layouts=None if decisive is None else [image.layout for image in decoded],
                decisive=decisive,
            )  # fmt: skip
            labels = run.labels[rows]
            self.writer.add(card_of(r, label) for r, label in zip(results, labels, strict=True))


def _header(run: FirstRun, calibration: Calibration | None) -> Header:
    fields = [("prompts (k)", f"{len(run.prompts)}, the first seed's draw from train/good")]
    cut = None
    if calibration is None:
        fields.append(("calibration", "none: no train/good images beside the prompts"))
    else:
        cut = threshold(calibration.scores, REPORT_FPR)
        fields.append(("calibration", f"n = {calibration.n} train/good images, not prompts"))
        fields.append(("target false-positive rate", f"{REPORT_FPR:g} (the report's)"))
        fields.append(("threshold", "none: too few calibration images for this rate"
                       if cut is None else f"{cut:.4f}"))  # fmt: skip
    prompts = tuple((name, png(thumbnail(load_image(name)))) for name in run.prompts)
    return Header(run.category, tuple(fields), prompts,
                  calibration=None if calibration is None else calibration.scores,
                  threshold=cut, target_fpr=None if cut is None else REPORT_FPR)  # fmt: skip
