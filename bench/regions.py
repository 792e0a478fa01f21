"""What regions cost per image, beside the encoder, at several frame sizes (CPU).

    python -m inctrl_bench.regions BUNDLE DATA/CATEGORY [--shots 2] [--json report.json]

A temporary copy of BUNDLE registers the category's first k ``train/good`` images and is
calibrated on the rest; its ``test/`` images (every defect type) are then enlarged to each frame
size and scored once. Per image it times the encoder pass (batch 16, onnxruntime), and the
region work on the results: the regions (``RegionRule.regions``: nothing for a part whose grid
maximum is not above the threshold, else the map in the frame, its runs and components) and the
mask of the frame (``Result.mask``). The table names the machine.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import typer
from PIL import Image

from inctrl_bench.machine import machine_info
from inctrl_runtime.datasets import ANOMALOUS, normal_images, scan_category
from inctrl_runtime.detector import Detector
from inctrl_runtime.regions import region_rule

FRAMES = ((240, 240), (1024, 1024), (2448, 2048))
BATCH = 16
REGION_FPR = 0.1

app = typer.Typer(add_completion=False)


def _median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1e3)


def measure(bundle: Path, category: Path, shots: int) -> dict:
    """Time the encoder and the region work per image at each of ``FRAMES``."""
    normals = normal_images(category)
    tests = [s for s in scan_category(category) if s.split == "test"]
    queries = [s.image_path for s in sorted(tests, key=lambda s: s.target != ANOMALOUS)][:BATCH]
    with tempfile.TemporaryDirectory() as work:
        copy = Path(shutil.copytree(bundle, Path(work) / "bundle"))
        shutil.rmtree(copy / "references", ignore_errors=True)
        detector = Detector.open(copy)
        detector.register(category.name, normals[:shots])
        calibration = detector.calibrate(category.name, normals[shots:])
        rule = region_rule(calibration, REGION_FPR)
        rows = []
        for width, height in FRAMES:
            frames = [Image.open(path).convert("RGB").resize((width, height)) for path in queries]
            pixels = detector.pixels(frames)
            detector.encode(pixels[:2])  # warm-up
            began = time.perf_counter()
            detector.encode(pixels)
            encoder_ms = (time.perf_counter() - began) * 1e3 / len(frames)
            results = detector.results(category.name, frames, batch_size=BATCH,
                                       fpr=REGION_FPR, heatmap_size=None)  # fmt: skip
            region_s, mask_s, found = [], [], 0
            for result in results:
                began = time.perf_counter()
                regions = rule.regions(result.patch_residual_map, result.framing)
                region_s.append(time.perf_counter() - began)
                began = time.perf_counter()
                result.mask()
                mask_s.append(time.perf_counter() - began)
                found += bool(regions)
            with_regions = [s for s, r in zip(region_s, results, strict=True) if r.regions]
            rows.append(
                {
                    "frame": f"{width} x {height}",
                    "images": len(frames),
                    "with_regions": found,
                    "encoder_ms_per_image": encoder_ms,
                    "regions_ms_median": _median_ms(region_s),
                    "regions_ms_median_with_regions": (
                        _median_ms(with_regions) if with_regions else None
                    ),
                    "mask_ms_median": _median_ms(mask_s),
                }
            )
        detector.close()
    return {"machine": machine_info(" ".join(["python -m inctrl_bench.regions", *sys.argv[1:]])),
            "region_fpr": REGION_FPR, "calibration_n": calibration.n, "rows": rows}  # fmt: skip


def table(report: dict) -> str:
    """The rows as markdown, with the machine."""
    machine = report["machine"]
    lines = [
        f"{machine['cpu']}, {machine['cores']} cores, {', '.join(machine['vector_extensions'])}; "
        f"`{machine['command']}`; region rate {report['region_fpr']}, n = "
        f"{report['calibration_n']}",
        "",
        "| frame | images (with regions) | encoder ms / image | regions ms (median; with "
        "regions) | mask ms |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in report["rows"]:
        with_regions = row["regions_ms_median_with_regions"]
        lines.append(
            f"| {row['frame']} | {row['images']} ({row['with_regions']}) | "
            f"{row['encoder_ms_per_image']:.1f} | {row['regions_ms_median']:.2f}; "
            f"{'-' if with_regions is None else f'{with_regions:.2f}'} | "
            f"{row['mask_ms_median']:.2f} |"
        )
    return "\n".join(lines)


@app.command()
def main(
    bundle: Path = typer.Argument(..., help="A bundle (inctrl-export onnx); it is not changed."),
    category: Path = typer.Argument(..., help="A category folder in the MVTec layout."),
    shots: int = typer.Option(2, help="Prompts: the first k train/good images."),
    report: Path = typer.Option(None, "--json", help="Also write the report here as JSON."),
) -> None:
    """Time the encoder and the regions per image at 240 x 240, 1024 x 1024, 2448 x 2048."""
    found = measure(bundle, category, shots)
    print(table(found))
    if report is not None:
        report.write_text(json.dumps(found, indent=2))


if __name__ == "__main__":
    app()
