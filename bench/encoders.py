"""Bundles' encoders timed in turn in one process (docs/int8.md): the encoder is what int8 and
mixed precision change, and a tiny encoder's time is a few milliseconds, within the noise
between two runs of ``inctrl-bench`` on a shared machine; timed round by round, in a rotating
order, their medians can be compared.

    python -m inctrl_bench.encoders BUNDLE BUNDLE ... [--batch 1,8] [--rounds 9]

Each round runs every bundle's encoder at every batch size for at least ``--seconds`` (and 3
runs) on seeded pixels, after a warm-up; a row is the median over the rounds of its images per
second, and its speed against the first bundle's.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import typer

from inctrl_bench.machine import machine_info
from inctrl_runtime.detector import Detector


def images_per_second(detector: Detector, pixels: np.ndarray, seconds: float) -> float:
    """Images per second of the encoder alone on ``pixels`` (one batch), over at least
    ``seconds`` and 3 runs."""
    runs, began = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - began < seconds:
        detector.encode(pixels)
        runs += 1
    return runs * len(pixels) / (time.perf_counter() - began)


def _split(detector: Detector) -> str:
    quantization = detector.bundle.graphs["encoder"].quantization
    return detector.precision if quantization is None else f"int8, {quantization.split}"


def main(
    bundles: list[Path] = typer.Argument(..., help="Bundles; speeds are against the first."),
    batch: str = typer.Option("1,8", help="Comma-separated batch sizes."),
    rounds: int = typer.Option(9, help="Rounds; each times every bundle at every batch."),
    seconds: float = typer.Option(1.0, help="Least time of one measurement."),
) -> None:
    sizes = [int(size) for size in batch.split(",")]
    detectors = [Detector.open(bundle) for bundle in bundles]
    size = detectors[0].bundle.model.image_size
    pixels = np.random.default_rng(0).standard_normal((max(sizes), 3, size, size), np.float32)
    for detector in detectors:  # warm-up: first runs allocate and tune
        for count in sizes:
            images_per_second(detector, pixels[:count], 0.2)
    found: dict[tuple[int, int], list[float]] = {}
    for turn in range(rounds):
        for shift in range(len(detectors)):
            index = (turn + shift) % len(detectors)
            for count in sizes:
                speed = images_per_second(detectors[index], pixels[:count], seconds)
                found.setdefault((index, count), []).append(speed)
    machine = machine_info(" ".join(["python -m inctrl_bench.encoders", *sys.argv[1:]]))
    print(f"{machine['cpu']}, {machine['cores']} cores, "
          f"{', '.join(machine['vector_extensions'])}; {machine['date']}")  # fmt: skip
    print(f"encoder images/s, median of {rounds} rounds; speed against {bundles[0]}")
    columns = " | ".join(f"b={count} | vs" for count in sizes)
    print(f"| bundle | encoder | {columns} |\n| --- | --- |" + " ---: | ---: |" * len(sizes))
    for index, detector in enumerate(detectors):
        cells = []
        for count in sizes:
            median = statistics.median(found[(index, count)])
            base = statistics.median(found[(0, count)])
            cells.append(f"{median:.1f} | {median / base:.2f}x")
        print(f"| {bundles[index]} | {_split(detector)} | {' | '.join(cells)} |")


if __name__ == "__main__":
    typer.run(main)
