"""Image-level anomaly detection metrics on scores: AUROC and AUPRC (scikit-learn). The
pixel-level ones, shared with the bench, are ``inctrl_runtime.pixel_metrics``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


def image_metrics(targets: Sequence[int], scores: Sequence[float]) -> tuple[float, float]:
    """Image AUROC and AUPRC (average precision) of anomaly scores; targets 1 = anomalous."""
    targets, scores = np.asarray(targets), np.asarray(scores, dtype=np.float64)
    return float(roc_auc_score(targets, scores)), float(average_precision_score(targets, scores))
