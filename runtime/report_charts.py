"""The inspection report's two charts as inline SVG, drawn here (no plotting library in the
runtime): the score histogram with the threshold line, and the ROC curve."""

from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT = 640, 220  # the drawing, in SVG units (it scales with the page)
LEFT, RIGHT, TOP, BOTTOM = 48, 28, 12, 36  # margins around the plot area
CALIBRATION_COLOUR, RUN_COLOUR, THRESHOLD_COLOUR = "#8aa4c8", "#e07b39", "#c0392b"


def _bins(values: list[np.ndarray], count: int) -> np.ndarray:
    """``count`` equal bins over the range of every value given (a unit range if it is one
    point)."""
    present = [v for v in values if v.size]
    low = min(float(v.min()) for v in present)
    high = max(float(v.max()) for v in present)
    if high <= low:
        low, high = low - 0.5, high + 0.5
    return np.linspace(low, high, count + 1)


def histogram(
    calibration: np.ndarray, run: np.ndarray, threshold: float | None, bins: int = 40
) -> str:
    """The calibration's and the run's scores as two outlined histograms over shared bins, each
    normalized to its own count (so a run of 20 parts compares with a calibration of 200), and
    a vertical line (class ``threshold-line``) at ``threshold`` (None: none). The ``svg``
    carries its score range and plot area (``data-low``, ``data-high``, ``data-left``,
    ``data-width``) so a reader can map a score to its x."""
    calibration = np.asarray(calibration, dtype=np.float64)
    run = np.asarray(run, dtype=np.float64)
    shown = [calibration, run] + ([np.array([threshold])] if threshold is not None else [])
    edges = _bins(shown, bins)
    low, high = float(edges[0]), float(edges[-1])
    width, height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x_of(score: float) -> float:
        return LEFT + (score - low) / (high - low) * width

    shares = [np.histogram(v, edges)[0] / max(v.size, 1) for v in (calibration, run)]
    top = max(float(max(s.max() for s in shares)), 1e-9)
    parts = [
        f'<svg class="chart histogram" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'data-low="{low!r}" data-high="{high!r}" data-left="{LEFT}" data-width="{width}" '
        f'data-total-width="{WIDTH}" aria-label="score histogram">',
        f'<rect x="{LEFT}" y="{TOP}" width="{width}" height="{height}" class="plot"/>',
    ]
    for share, colour, name in zip(shares, (CALIBRATION_COLOUR, RUN_COLOUR),
                                   ("calibration", "run"), strict=True):  # fmt: skip
        points = [f"{LEFT},{TOP + height}"]
        for i, value in enumerate(share):
            y = TOP + height - value / top * height
            points += [f"{x_of(edges[i]):.2f},{y:.2f}", f"{x_of(edges[i + 1]):.2f},{y:.2f}"]
        points.append(f"{LEFT + width},{TOP + height}")
        parts.append(f'<polyline class="{name}" points="{" ".join(points)}" fill="{colour}" '
                     f'fill-opacity="0.35" stroke="{colour}" stroke-width="1.5"/>')  # fmt: skip
    if threshold is not None:
        x = x_of(threshold)
        parts.append(f'<line class="threshold-line" x1="{x:.3f}" x2="{x:.3f}" y1="{TOP}" '
                     f'y2="{TOP + height}" stroke="{THRESHOLD_COLOUR}" stroke-width="2" '
                     f'data-threshold="{threshold!r}"/>')  # fmt: skip
    for tick in np.linspace(low, high, 5):
        parts.append(f'<text x="{x_of(tick):.1f}" y="{HEIGHT - 18}" text-anchor="middle">'
                     f"{tick:.3g}</text>")  # fmt: skip
    parts.append(f'<text x="{LEFT + width / 2}" y="{HEIGHT - 3}" text-anchor="middle">score '
                 "(share of each set's parts per bin)</text></svg>")  # fmt: skip
    return "".join(parts)


def roc_curve(normal: np.ndarray, anomalous: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve's points (false-positive rate, true-positive rate), from (0, 0) to (1, 1),
    one step per distinct score (ties move both rates at once)."""
    scores = np.concatenate([normal, anomalous]).astype(np.float64)
    positive = np.concatenate([np.zeros(len(normal)), np.ones(len(anomalous))])
    order = np.argsort(-scores, kind="stable")
    scores, positive = scores[order], positive[order]
    last_of_tie = np.r_[np.diff(scores) != 0, True]
    tp = np.cumsum(positive)[last_of_tie]
    fp = np.cumsum(1 - positive)[last_of_tie]
    return np.r_[0, fp / max(len(normal), 1)], np.r_[0, tp / max(len(anomalous), 1)]


def roc(normal: np.ndarray, anomalous: np.ndarray, auroc: float) -> str:
    """The ROC curve of normal against anomalous scores, its AUROC in the corner."""
    fpr, tpr = roc_curve(np.asarray(normal), np.asarray(anomalous))
    side = 220
    inner = side - 40
    points = " ".join(f"{30 + f * inner:.2f},{10 + (1 - t) * inner:.2f}"
                      for f, t in zip(fpr, tpr, strict=True))  # fmt: skip
    return (
        f'<svg class="chart roc" viewBox="0 0 {side} {side}" role="img" aria-label="ROC curve">'
        f'<rect x="30" y="10" width="{inner}" height="{inner}" class="plot"/>'
        f'<line x1="30" y1="{10 + inner}" x2="{30 + inner}" y2="10" stroke="#bbb" '
        'stroke-dasharray="4 3"/>'
        f'<polyline points="{points}" fill="none" stroke="{RUN_COLOUR}" stroke-width="2"/>'
        f'<text x="{30 + inner - 4}" y="{inner}" text-anchor="end">AUROC {auroc:.3f}</text>'
        f'<text x="{30 + inner / 2}" y="{side - 12}" text-anchor="middle">false-positive rate'
        f'</text><text x="12" y="{10 + inner / 2}" transform="rotate(-90 12 {10 + inner / 2})" '
        f'text-anchor="middle">{escape("true-positive rate")}</text></svg>'
    )
