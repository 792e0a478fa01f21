"""A picture of a drift monitor's evidence over the parts seen, drawn with Pillow.

The evidence (the test martingale's value) on a log scale against the part's number, the alarm
level 1/delta as a dashed red line, and the first part at which the evidence reached it marked.
Where there are more parts than pixels across, each column shows the largest evidence of its
parts, so that no crossing of the alarm level is drawn away.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

WIDTH, HEIGHT = 900, 380
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 40, 50  # the margins around the plot area
_INK, _GRID, _LINE, _ALARM = (30, 30, 30), (225, 225, 225), (31, 119, 180), (214, 39, 40)


def evidence_picture(evidence: np.ndarray, delta: float, title: str) -> Image.Image:
    """The evidence after each part (``evidence[i]`` after part i + 1) with the alarm level
    1/``delta``, under ``title``."""
    image = Image.new("RGB", (WIDTH, HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    level = math.log10(1.0 / delta)
    values = np.log10(np.maximum(np.asarray(evidence, dtype=np.float64), 1e-300))
    low = math.floor(min(-1.0, float(values.min()) if len(values) else 0.0))
    high = math.ceil(max(level + 1.0, float(values.max()) if len(values) else 0.0))
    count = max(len(values), 1)
    area = (_LEFT, _TOP, WIDTH - _RIGHT, HEIGHT - _BOTTOM)

    def y_of(value: float) -> float:
        return area[3] - (value - low) / (high - low) * (area[3] - area[1])

    def x_of(part: float) -> float:
        return area[0] + part / count * (area[2] - area[0])

    step = max(1, math.ceil((high - low) / 8))
    for power in range(low, high + 1, step):  # a grid line per power of ten
        y = y_of(power)
        draw.line([(area[0], y), (area[2], y)], fill=_GRID)
        draw.text((area[0] - 8, y), f"1e{power}", fill=_INK, anchor="rm")
    draw.rectangle(area, outline=_INK)
    for tick in np.linspace(0, count, 5):
        draw.text((x_of(tick), area[3] + 6), f"{int(round(tick))}", fill=_INK, anchor="ma")
    draw.text(((area[0] + area[2]) / 2, HEIGHT - 18), "parts since the last reset", fill=_INK,
              anchor="ma")  # fmt: skip
    draw.text((area[0], 12), title, fill=_INK)
    alarm_y = y_of(level)
    for x in range(area[0], area[2], 12):  # dashed
        draw.line([(x, alarm_y), (min(x + 6, area[2]), alarm_y)], fill=_ALARM, width=2)
    draw.text((area[2] - 4, alarm_y - 4), f"alarm: 1/delta = {1 / delta:g}", fill=_ALARM,
              anchor="rb")  # fmt: skip
    if len(values):
        columns = area[2] - area[0]
        bins = np.minimum((np.arange(len(values)) * columns) // count, columns - 1)
        peaks = np.full(columns, -np.inf)
        np.maximum.at(peaks, bins, values)
        points = [(area[0] + c + 0.5, y_of(v)) for c, v in enumerate(peaks) if np.isfinite(v)]
        if len(points) == 1:
            points.append(points[0])
        draw.line([(area[0], y_of(0.0)), *points], fill=_LINE, width=2)
        crossed = np.flatnonzero(values >= level - 1e-12)
        if len(crossed):
            x, y = x_of(crossed[0] + 1), y_of(values[crossed[0]])
            draw.ellipse([x - 5, y - 5, x + 5, y + 5], outline=_ALARM, width=2)
            draw.text((x + 8, y + 4), f"alarm at part {crossed[0] + 1}", fill=_ALARM)
    return image
