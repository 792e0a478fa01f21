"""Pictures of an evaluation: ROC curves and score distributions per category (matplotlib)."""

from __future__ import annotations

import os

import numpy as np

from inctrl.evaluation_report import CategoryResult, EvaluationReport
from inctrl_runtime.files import atomic_path


def _median_run(result: CategoryResult):
    """The run whose AUROC is the median of the category's runs: a typical prompt draw."""
    ordered = sorted(result.runs, key=lambda run: run.auroc)
    return ordered[len(ordered) // 2]


def plot_report(report: EvaluationReport, path: str | os.PathLike) -> None:
    """Write a PNG: per category its ROC curve (typical run) and its score histograms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    categories = report.categories
    figure, axes = plt.subplots(
        2, len(categories), figsize=(3.6 * len(categories), 6.6), squeeze=False
    )
    for column, result in enumerate(categories):
        run = _median_run(result)
        targets = np.asarray(result.targets)
        scores = np.asarray(run.scores)
        false_positive, true_positive, _ = roc_curve(targets, scores)
        roc_axis, histogram_axis = axes[0][column], axes[1][column]
        roc_axis.plot(false_positive, true_positive, color="tab:blue")
        roc_axis.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1)
        roc_axis.set_title(f"{result.category}\nAUROC {result.auroc}", fontsize=9)
        roc_axis.set_xlabel("false positive rate")
        roc_axis.set_ylabel("true positive rate")
        bins = np.linspace(scores.min(), scores.max(), 16)
        histogram_axis.hist(scores[targets == 0], bins=bins, alpha=0.6, label="normal")
        histogram_axis.hist(scores[targets == 1], bins=bins, alpha=0.6, label="anomalous")
        histogram_axis.set_xlabel("score (typical run)")
        histogram_axis.legend(fontsize=8)
    figure.suptitle(report.settings.describe(), fontsize=9)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110)
    plt.close(figure)
