"""The drift monitor measured: false alarms without drift, what a share of defects does, how
soon each kind of drift is seen, and what a part costs (docs/drift.md).

    python -m inctrl_bench.drift BUNDLE [--category synth_wood] [--normals 1200] [--switch 1000]
        [--json out.json]

BUNDLE holds the category's text prior (the demo: ``inctrl-export onnx --out demo --category
synth_wood --category synth_fabric``). The category's normals are rendered in memory
(``inctrl.synth.render``, train/good), the first k registered in a temporary copy of the bundle
and every other one scored once; so are its test defects, and each normal again under each of
``DRIFTS``. Streams are then built from these stored scores: each one a fresh permutation whose
first ``CALIBRATION`` normals are its calibration (re-drawn per stream) and whose next ones are
its parts, so that under no drift the stream is exchangeable with its calibration:

- null: ``LENGTH`` normals; how many streams alarm at delta 0.01 and 0.05;
- defects: normals with a share of defects mixed in at random;
- drift: ``SWITCH`` normals, then ``LENGTH`` drifted normals: the alarms before the switch, the
  share of streams alarming within ``LENGTH`` parts after it, and the delay (parts after the
  switch) at delta 0.01, for the Simple Jumper and, for comparison, a power martingale.
"""

from __future__ import annotations

import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import typer
from PIL import Image, ImageEnhance, ImageFilter

from inctrl_bench.machine import machine_info
from inctrl_runtime.decisions import threshold
from inctrl_runtime.drift import MonitorState, Ranks, tie_breaks

CALIBRATION = 100  # normals per stream's calibration
LENGTH = 500  # parts per null stream, and drifted parts after a switch
SWITCH = 300  # in-control parts before a drift
STREAMS = 200
DELTAS = (0.01, 0.05)
SHOTS = 2
FPR = 0.01  # the decisions' rate, for the unflagged-parts alternative
POWER_BETS = np.linspace(0.005, 0.995, 199)  # the power martingale's mixture over epsilon


def _jpeg(image: Image.Image, quality: int = 30) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _shift(image: Image.Image, share: float = 0.04) -> Image.Image:
    dx, dy = round(image.width * share), round(image.height * share)
    return image.transform(image.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), Image.BILINEAR)


# What drifts a line's normals, each a function of one picture (``another material`` is the
# normals of another category, see ``drifted_normals``).
DRIFTS: dict[str, Callable[[Image.Image], Image.Image] | None] = {
    "brighter light (x1.3)": lambda image: ImageEnhance.Brightness(image).enhance(1.3),
    "darker light (x0.7)": lambda image: ImageEnhance.Brightness(image).enhance(0.7),
    "lower contrast (x0.6)": lambda image: ImageEnhance.Contrast(image).enhance(0.6),
    "higher contrast (x1.5)": lambda image: ImageEnhance.Contrast(image).enhance(1.5),
    "Gaussian blur (2 px)": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "rotated 3 degrees": lambda image: image.rotate(3, Image.BILINEAR),
    "shifted 4%": _shift,
    "JPEG quality 30": _jpeg,
    "another material": None,
}


def power_evidence(p_values: np.ndarray) -> np.ndarray:
    """A power martingale's value after each p-value: the mean over ``POWER_BETS`` of
    prod e p^(e - 1), which bets on small p-values (scores drifting up) only."""
    logs = np.log(POWER_BETS)[:, None] + (POWER_BETS[:, None] - 1) * np.log(p_values)[None, :]
    paths = np.cumsum(logs, axis=1)
    top = paths.max(axis=0)
    return np.exp(top + np.log(np.exp(paths - top).mean(axis=0)))


def stream_evidence(
    calibration: np.ndarray, parts: np.ndarray, seed: int, unflagged: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The Simple Jumper's and the power martingale's evidence after each part of a stream
    against its ``calibration`` (the same online p-values, ties broken with ``seed``). The
    monitor watches every part; ``unflagged`` measures the alternative docs/drift.md weighs:
    only the parts the decisions at ``FPR`` do not flag, ranked against the calibration scores
    below their order statistic (a flagged part leaves the evidence as it was)."""
    watched = np.ones(len(parts), bool)
    if unflagged:
        cut = threshold(np.sort(calibration), FPR)
        if cut is not None:
            calibration, watched = calibration[calibration < cut], parts < cut
    ranks = Ranks(calibration)
    thetas = tie_breaks(seed, 0, int(watched.sum()))
    chosen = parts[watched]
    p = np.array([ranks.p_value(float(s), float(t)) for s, t in zip(chosen, thetas, strict=True)])
    before = np.cumsum(watched) - 1  # each part's last watched part (-1: none yet)
    paths = []
    for values in (MonitorState(Ranks(), seed).bet(p), power_evidence(p)):
        paths.append(np.where(before >= 0, values[np.maximum(before, 0)] if len(values) else 1, 1))
    return paths[0], paths[1]


def first_alarm(evidence: np.ndarray, delta: float) -> int | None:
    """The first part (1-based) whose evidence reached 1/delta, or None."""
    found = np.flatnonzero(evidence >= 1.0 / delta)
    return int(found[0]) + 1 if len(found) else None


def null_streams(pool: np.ndarray, streams: int = STREAMS, length: int = LENGTH, seed: int = 0):
    """Streams of normals exchangeable with their calibration: per stream (jumper, power)."""
    rng = np.random.default_rng(seed)
    for index in range(streams):
        order = rng.permutation(len(pool))
        calibration = pool[order[:CALIBRATION]]
        yield stream_evidence(calibration, pool[order[CALIBRATION : CALIBRATION + length]], index)


def defect_streams(
    pool: np.ndarray,
    defects: np.ndarray,
    share: float,
    streams: int = STREAMS,
    length: int = 2 * LENGTH,
    seed: int = 1,
    unflagged: bool = False,
):
    """Streams of normals with a ``share`` of defects mixed in at random places."""
    rng = np.random.default_rng(seed)
    for index in range(streams):
        order = rng.permutation(len(pool))
        calibration = pool[order[:CALIBRATION]]
        goods = pool[rng.choice(order[CALIBRATION:], length)]
        bad = rng.random(length) < share
        goods[bad] = rng.choice(defects, int(bad.sum()))
        yield stream_evidence(calibration, goods, index, unflagged)


def drift_streams(
    pool: np.ndarray,
    drifted: np.ndarray,
    streams: int = STREAMS,
    switch: int = SWITCH,
    length: int = LENGTH,
    seed: int = 2,
    unflagged: bool = False,
):
    """Streams of ``switch`` normals and then ``length`` drifted ones (drawn from ``drifted``,
    the scores of the pool's normals after the drift, none of them the calibration's own)."""
    rng = np.random.default_rng(seed)
    for index in range(streams):
        order = rng.permutation(len(pool))
        calibration = pool[order[:CALIBRATION]]
        rest = order[CALIBRATION:]
        before = pool[rng.choice(rest, switch, replace=len(rest) < switch)]
        after = drifted[rng.choice(rest, length, replace=len(rest) < length)]
        yield stream_evidence(calibration, np.concatenate([before, after]), index, unflagged)


def summarize_drift(paths, switch: int = SWITCH, delta: float = 0.01) -> dict:
    """Per martingale: the share of streams alarming before the switch, the share alarming
    within the drifted parts, and the delays after the switch (median, 90th percentile, counting
    a stream that never alarms as never)."""
    found: dict[str, dict[str, list]] = {"jumper": {}, "power": {}}
    for jumper, power in paths:
        for name, evidence in (("jumper", jumper), ("power", power)):
            early = first_alarm(evidence[:switch], delta)
            late = first_alarm(evidence[switch:], delta)
            found[name].setdefault("early", []).append(early is not None)
            found[name].setdefault("delay", []).append(np.inf if late is None else late)
    summary = {}
    for name, lists in found.items():
        delays = np.asarray(lists["delay"], dtype=float)
        median, p90 = (float(np.quantile(delays, q, method="inverted_cdf")) for q in (0.5, 0.9))
        summary[name] = {
            "alarmed_before_switch": float(np.mean(lists["early"])),
            "detected": float(np.mean(np.isfinite(delays))),
            "delay_median": median if np.isfinite(median) else None,  # None: never
            "delay_p90": p90 if np.isfinite(p90) else None,
        }
    return summary


def alarm_rates(paths, deltas=DELTAS) -> dict:
    """Per martingale and delta: the share of streams that ever alarmed."""
    paths = list(paths)
    return {
        name: {str(delta): float(np.mean([first_alarm(p[i], delta) is not None for p in paths]))
               for delta in deltas}
        for i, name in enumerate(("jumper", "power"))
    }  # fmt: skip


def render_normals(category: str, count: int, size: int = 240, first: int = 0) -> list:
    """``count`` train/good normals of a synthetic category, rendered in memory."""
    from inctrl.synth import render

    return [Image.fromarray(render(category, "train", "good", first + i, size=size).image)
            for i in range(count)]  # fmt: skip


def render_defects(category: str, count: int, size: int = 240) -> list:
    """``count`` test defects of a synthetic category, every defect kind in turn."""
    from inctrl.synth import DEFECTS, render

    return [Image.fromarray(render(category, "test", DEFECTS[i % len(DEFECTS)], i // len(DEFECTS),
                                   size=size).image) for i in range(count)]  # fmt: skip


def cost_per_part(monitor, parts: np.ndarray) -> dict:
    """Microseconds a part costs the drift monitor: in memory (one part a call, and 16) and kept on
    disk (``DriftMonitor.take`` in batches of 16: the lock, the append with its fsync, the
    snapshot); then a stream of 10^6 parts: its cost, the files' sizes, and how long a restarted
    process takes to read the state back."""
    from inctrl_runtime.drift_store import RECORD, DriftMonitor

    timings = {}
    for batch in (1, 16):
        state = MonitorState.start(monitor.bank.calibration.scores, 0)
        began = time.perf_counter()
        for start in range(0, len(parts), batch):
            state.observe(parts[start : start + batch])
        timings[batch] = (time.perf_counter() - began) / len(parts) * 1e6
    on_disk = parts[:4000]
    began = time.perf_counter()
    for start in range(0, len(on_disk), 16):
        monitor.take(on_disk[start : start + 16], 0.01)
    disk_us = (time.perf_counter() - began) / len(on_disk) * 1e6
    million = np.resize(parts, 10**6)  # a long stream: the state's size and a restart's cost
    began = time.perf_counter()
    for start in range(0, len(million), 10_000):
        monitor.take(million[start : start + 10_000], 0.01)
    long_us = (time.perf_counter() - began) / len(million) * 1e6
    began = time.perf_counter()
    restarted = DriftMonitor(monitor.folder.parent, monitor.category, monitor.bank).status()
    restart_s = time.perf_counter() - began
    return {
        "parts_after_the_long_stream": restarted.observed,
        "on_disk_us_batch_10000_to_1e6": long_us,
        "log_bytes": monitor.log.stat().st_size,
        "snapshot_bytes": monitor.snapshot_path.stat().st_size,
        "restart_s": restart_s,
        "in_memory_us_batch_1": timings[1],
        "in_memory_us_batch_16": timings[16],
        "on_disk_us_batch_16": disk_us,
        "log_bytes_per_part": RECORD.itemsize,
        "log_bytes_at_1e6_parts": RECORD.itemsize * 10**6,
    }


app = typer.Typer(add_completion=False)


@app.command()
def main(
    bundle: Path = typer.Argument(..., help="A bundle with the category's text prior."),
    category: str = typer.Option("synth_wood", help="The synthetic category of the line."),
    other: str = typer.Option("synth_fabric", help="'Another material': this category's normals."),
    normals: int = typer.Option(600, help="Normals rendered and scored (the streams' pool)."),
    streams: int = typer.Option(STREAMS, help="Streams per case."),
    switch: int = typer.Option(SWITCH, help="In-control parts before a drift."),
    out: Path = typer.Option(None, "--json", help="Write the report here."),
) -> None:
    from inctrl_runtime.detector import Detector

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        copy = Path(shutil.copytree(bundle, Path(work) / "bundle"))
        shutil.rmtree(copy / "references", ignore_errors=True)
        detector = Detector.open(copy)
        images = render_normals(category, normals + SHOTS)
        detector.register(category, images[:SHOTS])
        pool_images = images[SHOTS:]

        def scores(pictures: list) -> np.ndarray:
            return detector.score_arrays(category, pictures, batch_size=32).score.astype(float)

        pool = scores(pool_images)
        defects = scores(render_defects(category, 200))
        drifted = {}
        for name, drift in DRIFTS.items():
            pictures = (render_normals(other, normals) if drift is None
                        else [drift(picture) for picture in pool_images])  # fmt: skip
            drifted[name] = scores(pictures)
        scoring_s = time.perf_counter() - started
        report = {
            "machine": machine_info(" ".join(["python -m inctrl_bench.drift", *sys.argv[1:]])),
            "category": category,
            "normals": len(pool),
            "streams": streams,
            "calibration": CALIBRATION,
            "switch": switch,
            "scoring_s": scoring_s,
            "null": alarm_rates(null_streams(pool, streams)),
            "defects": {
                f"{share:g}": {
                    "every part": alarm_rates(defect_streams(pool, defects, share, streams)),
                    "unflagged parts": alarm_rates(
                        defect_streams(pool, defects, share, streams, unflagged=True)
                    ),
                }
                for share in (0.02, 0.2)
            },
            "drifts": {},
        }
        detector.calibrate(category, pool_images[:CALIBRATION])
        parts = np.random.default_rng(3).choice(pool, 20_000).astype(np.float32)
        report["cost"] = cost_per_part(detector.monitor(category), parts)
        for name, values in drifted.items():
            summary = summarize_drift(drift_streams(pool, values, streams, switch), switch)
            alternative = summarize_drift(
                drift_streams(pool, values, streams, switch, unflagged=True), switch
            )["jumper"]
            shift = float(np.median(values) - np.median(pool))
            report["drifts"][name] = {
                "median_score_shift": shift,
                **summary,
                "jumper, unflagged parts": alternative,
            }
    text = json.dumps(report, indent=1)
    if out is not None:
        out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    app()
