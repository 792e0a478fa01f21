"""What the inspection report costs (docs/report.md): ``inctrl-run score`` over N parts, with and
without ``--report``, each in a process of its own: wall time, the report's size, and the peak
memory of the process (which must not grow with N: the report spools its cards to disk).

    python -m inctrl_bench.report_cost BUNDLE --category synth_fabric DIR ... [--parts 100,2000]

The parts are the folders' images taken in turn (the first of each folder, then the second,
...), repeated until there are N of them.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import typer

from inctrl_bench.machine import machine_info
from inctrl_runtime.fewshot import list_images


def _run(command: list[str]) -> tuple[float, int]:
    """Wall seconds and peak RSS (MiB) of a command run to its end."""
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed: {process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss // 1024


def measure(bundle: Path, category: str, images: list[Path], parts: int) -> dict:
    """One row: N parts scored without and with a report."""
    chosen = [str(images[i % len(images)]) for i in range(parts)]
    program = str(Path(sys.executable).with_name("inctrl-run"))
    base = [program, "score", str(bundle), "--category", category, "--jsonl"]
    with tempfile.TemporaryDirectory() as folder:
        page = Path(folder) / "report.html"
        plain_s, plain_mib = _run([*base, *chosen])
        report_s, report_mib = _run([*base, "--report", str(page), *chosen])
        size = page.stat().st_size
    return {"parts": parts, "score_s": plain_s, "score_with_report_s": report_s,
            "report_s": report_s - plain_s, "report_mb": size / 1e6,
            "peak_mib": plain_mib, "peak_with_report_mib": report_mib}  # fmt: skip


def main(
    bundle: Path = typer.Argument(..., help="A bundle whose category is registered."),
    folders: list[Path] = typer.Argument(..., help="Folders of the category's images."),
    category: str = typer.Option(..., "--category"),
    parts: str = typer.Option("100,2000", help="Comma-separated numbers of parts."),
) -> None:
    listed = [list_images(folder) for folder in folders]
    found = [image for turn in itertools.zip_longest(*listed) for image in turn if image]
    machine = machine_info(" ".join(["python -m inctrl_bench.report_cost", *sys.argv[1:]]))
    print(f"{machine['cpu']}, {machine['cores']} cores, "
          f"{', '.join(machine['vector_extensions'])}; {machine['date']}")  # fmt: skip
    print(
        "| parts | score | score --report | the report's time | report size | peak RSS "
        "(without / with) |\n| ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for count in (int(n) for n in parts.split(",")):
        row = measure(bundle, category, found, count)
        print(
            f"| {count} | {row['score_s']:.1f} s | {row['score_with_report_s']:.1f} s | "
            f"{row['report_s']:.1f} s | {row['report_mb']:.1f} MB | "
            f"{row['peak_mib']} / {row['peak_with_report_mib']} MiB |",
            flush=True,
        )


if __name__ == "__main__":
    typer.run(main)
