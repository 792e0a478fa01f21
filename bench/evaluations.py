"""Compare ``inctrl evaluate --json`` reports side by side, e.g. a data set scored whole and with
tiles (docs/tiling.md): one markdown row per report, with the image AUROC also split by where
each defect lies (wholly outside the centre crop the untiled model sees, or not).

    python -m inctrl_bench.evaluations whole.json t2x2.json t3x3.json

For tiled reports it also scores other reductions of the tiles to a frame's score than the frame
score's (the largest patch residual over the tiles): the largest of the tiles' final scores, their
mean, and the largest with the whole frame's own score from the untiled report.

Each report's runs are scored again on those subsets from the per-image scores it holds (per run
the mean over categories, then the mean ± std over runs, as the report does); where a defect
lies is read from its ground-truth mask (``ground_truth/<defect>/<name>_mask.png``).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from inctrl_runtime.datasets import NORMAL
from inctrl_runtime.pixel_metrics import pair_auroc
from inctrl_runtime.regions import Framing

SIZE = 240  # the model's input: where the centre crop of a frame lies


def outside_crop(image: str) -> bool:
    """Whether the defect of a test image lies wholly in the band its centre crop cuts off."""
    path = Path(image)
    mask_file = path.parents[2] / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
    mask = np.asarray(Image.open(mask_file)) > 127
    x0, y0, x1, y1 = Framing(mask.shape[1], mask.shape[0], SIZE).inspected_box()
    return not mask[y0:y1, x0:x1].any()


def _over_runs(table: list[list[float]]) -> str:
    """Per run the mean over categories, then the mean ± std over runs (the report's way);
    ``table`` holds a row of run values per category that has the subset."""
    if not table:
        return "-"
    per_run = np.mean(table, axis=0)
    return f"{per_run.mean():.3f} ± {per_run.std():.3f}"


def report_row(path: Path) -> list[str]:
    """One report as a row: setting, image AUROC (all / defects outside the crop / inside),
    pixel AUROC, AUPRO, and region recall / flagged at a rate of 0.1 (means ± std over runs)."""
    report = json.loads(path.read_text())
    by_subset: dict[str, list[list[float]]] = {"all": [], "outside": [], "inside": []}
    for category in report["categories"]:
        targets = np.asarray(category["targets"])
        pairs = zip(category["images"], targets, strict=True)
        outside = np.array([t != NORMAL and outside_crop(image) for image, t in pairs])
        normal = targets == NORMAL
        subsets = {"all": ~normal, "outside": outside, "inside": ~normal & ~outside}
        for name, chosen in subsets.items():
            if chosen.any():
                by_subset[name].append([
                    pair_auroc(np.sort(np.asarray(run["scores"])[normal]),
                               np.asarray(run["scores"])[chosen])
                    for run in category["runs"]
                ])  # fmt: skip
    mean = report["mean"]
    at_01 = next(p for p in mean["operating_points"] if p["target_fpr"] == 0.1)
    regions = "-"
    if at_01.get("region_recall"):
        regions = f"{at_01['region_recall']['mean']:.3f} / {at_01['region_flag_rate']['mean']:.3f}"

    def stat(key: str) -> str:
        values = mean[key]
        return "-" if values is None else f"{values['mean']:.3f} ± {values['std']:.3f}"

    return [report["settings"]["tiles"] or "whole", _over_runs(by_subset["all"]),
            _over_runs(by_subset["outside"]), _over_runs(by_subset["inside"]), stat("pixel_auroc"),
            stat("aupro"), regions]  # fmt: skip


# Each: (the frame scores, the tiles' final scores, the whole frame's score) -> a frame's score.
REDUCTIONS = {
    "largest patch residual (the frame score)": lambda frame, tiles, whole: frame,
    "largest tile score": lambda frame, tiles, whole: tiles.max(axis=1),
    "mean tile score": lambda frame, tiles, whole: tiles.mean(axis=1),
    "largest tile score or the whole frame's": lambda frame, tiles, whole: np.maximum(
        tiles.max(axis=1), whole
    ),
}


def reduction_row(path: Path, whole: Path | None) -> list[str] | None:
    """A tiled report's image AUROC under its frame score and other reductions of its tiles to
    a frame's score (``REDUCTIONS``; the whole frame's own score from the untiled report
    ``whole``, whose runs drew the same prompts); None for a report without tile scores."""
    report = json.loads(path.read_text())
    plain = json.loads(whole.read_text()) if whole is not None else None
    table: dict[str, list[list[float]]] = {name: [] for name in REDUCTIONS}
    for index, category in enumerate(report["categories"]):
        normal = np.asarray(category["targets"]) == NORMAL
        for name, reduce in REDUCTIONS.items():
            values = []
            for run_index, run in enumerate(category["runs"]):
                if run.get("tile_scores") is None:
                    return None
                other = None
                if plain is not None:
                    twin = plain["categories"][index]["runs"][run_index]
                    assert twin["prompts"] == run["prompts"], "the runs drew other prompts"
                    other = np.asarray(twin["scores"])
                elif "whole" in name:
                    break
                scores = reduce(np.asarray(run["scores"]), np.asarray(run["tile_scores"]), other)
                values.append(pair_auroc(np.sort(scores[normal]), scores[~normal]))
            if values:
                table[name].append(values)
    return [report["settings"]["tiles"], *(_over_runs(table[name]) for name in REDUCTIONS)]


def main(argv: Sequence[str] | None = None) -> None:
    paths = [Path(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    if not paths:
        sys.exit("usage: python -m inctrl_bench.evaluations REPORT.json [REPORT.json ...]")
    columns = ["tiles", "image AUROC", "defects outside the crop", "defects inside",
               "pixel AUROC", "AUPRO@0.3", "regions @0.1: recall / flagged"]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("| --- |" + " ---: |" * (len(columns) - 1))
    for path in paths:
        print("| " + " | ".join(report_row(path)) + " |")
    whole = next((p for p in paths if json.loads(p.read_text())["settings"]["tiles"] is None),
                 None)  # fmt: skip
    rows = [row for row in (reduction_row(path, whole) for path in paths) if row is not None]
    if rows:
        print("\nImage AUROC of the frame score and other reductions of the tiles:\n")
        print("| tiles | " + " | ".join(REDUCTIONS) + " |")
        print("| --- |" + " ---: |" * len(REDUCTIONS))
        for row in rows:
            print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
