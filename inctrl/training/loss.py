"""The training loss: binary focal loss in the authors' form and in the proper one."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from inctrl.training.config import LOSS_FORMS

# Keeps log(p) and log(1 - p), and their gradients, finite in the proper form.
PROBABILITY_EPS = 1e-6


def focal_loss(
    probabilities: torch.Tensor,
    targets: torch.Tensor,
    form: str = "authors",
    alpha: float = 1.0,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Binary focal loss ``alpha * (1 - pt)^gamma * bce`` with ``pt = exp(-bce)``, batch mean.

    Args:
        probabilities: B scores in [0, 1] (sigmoid outputs).
        targets: B labels, 0 (normal) or 1 (anomalous), float.
        form: ``"authors"``: their code passes the probabilities to
            ``binary_cross_entropy_with_logits``, i.e. treats them as logits, so even a perfect
            p = 1 for an anomaly costs log(1 + e^-1) (docs/model.md). ``"focal"``: the binary
            cross-entropy of the probabilities, clamped to [eps, 1 - eps].

    Returns:
        A scalar: the mean over the batch.
    """
    if form == "authors":
        bce = F.binary_cross_entropy_with_logits(probabilities, targets, reduction="none")
    elif form == "focal":
        clamped = probabilities.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        bce = F.binary_cross_entropy(clamped, targets, reduction="none")
    else:
        raise ValueError(f"unknown focal loss form {form!r}; choose one of {LOSS_FORMS}")
    return (alpha * (1 - torch.exp(-bce)) ** gamma * bce).mean()
