"""The output writers: JSON records, heatmap files and tables on the terminal.

``inctrl score`` and ``inctrl-run score`` both go ``to_records`` -> ``print_streamed``
(``inctrl-run`` batch by batch, through ``record_batches``), so their JSON is the same (the
records of ``inctrl_runtime.results``), heatmaps are drawn on the pictures decoded for scoring,
not read from disk again, and a failed heatmap write still shows the scores.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Literal

from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path, check_output_path, make_folder, sweep_stale
from inctrl_runtime.results import SCALAR_FIELDS, Result


class HeatmapWriteError(InputError):
    """Heatmaps that could not be written (every score was, nonetheless): the first failure's
    one line and how many failed, with the records (and the heatmaps that were written) for the
    command line to print first."""

    def __init__(self, first: str, failed: int, records: list[dict]) -> None:
        plural = "s" if failed != 1 else ""
        super().__init__(f"{first} ({failed} heatmap{plural} not written; every score is printed)")
        self.first, self.failed, self.records = first, failed, records


def check_heatmaps(folder: str | os.PathLike | None) -> None:
    """Refuse a ``--heatmaps`` that names an existing file or a place in a bundle
    (``files.check_output_path``), before any scoring work."""
    if folder is None:
        return
    check_output_path(folder, "--heatmaps")
    if Path(folder).exists() and not Path(folder).is_dir():
        raise InputError(
            f"--heatmaps {folder}: is a file, not a folder; name a folder for the heatmap PNGs "
            "(it is created if missing)"
        )


def heatmap_names(images: Sequence[str], start: int = 0) -> list[str]:
    """The heatmap file of each image (``Result.image``): ``NNNN_<image stem>.png``, NNNN the
    image's index in the whole run, counted from ``start`` for this part of it."""
    return [f"{start + i:04d}_{Path(image).stem}.png" for i, image in enumerate(images)]


def to_records(
    scored: Sequence[Result],
    heatmaps: str | os.PathLike | None = None,
    start: int = 0,
    sweep: bool = True,
) -> list[dict]:
    """The JSON records of ``inctrl score`` and ``inctrl-run score``, in order; with a
    ``heatmaps`` folder, a heatmap PNG per result there (``heatmap_names``, numbered from
    ``start``, the index of the first result in the run), drawn on the picture already decoded,
    and its path in the record. ``sweep``: first remove what dead writers left of these files
    (``record_batches`` sweeps once for a whole run instead).

    A heatmap that cannot be written (disk full, read-only, a name in the way) costs only its
    picture: the others are still written, and HeatmapWriteError (with every record) is raised
    once all were tried.
    """
    rows = [result.record() for result in scored]
    if heatmaps is None:
        return rows
    try:
        folder = make_folder(heatmaps)
    except InputError as err:
        raise HeatmapWriteError(str(err), len(rows), rows) from err
    names = heatmap_names([result.image for result in scored], start)
    if sweep:
        sweep_stale(folder, names)  # once for the folder, not once per file
    failures = []
    for result, row, name in zip(scored, rows, names, strict=True):
        try:
            with atomic_path(folder / name, sweep=False) as tmp:
                result.heatmap().save(tmp, format="PNG")
        except InputError as err:
            failures.append(str(err))
        else:
            row["heatmap"] = str(folder / name)
    if failures:
        raise HeatmapWriteError(failures[0], len(failures), rows)
    return rows


def record_batches(
    batches: Iterable[Sequence[Result]],
    images: Sequence[str],
    heatmaps: str | os.PathLike | None = None,
) -> Iterator[list[dict]]:
    """``to_records`` of each batch of a run over ``images`` (as ``Result.image`` names them), as
    the batch comes: heatmap names numbered across the run, the folder swept once for all of
    them. A batch's Results (and their pictures) can go once its records are yielded. Heatmaps
    that could not be written cost no score: every batch's records come, and one
    HeatmapWriteError (the first failure, how many) is raised after the last."""
    if heatmaps is not None:
        sweep_stale(heatmaps, heatmap_names(images))  # nothing to sweep in a missing folder
    start, first, failed = 0, "", 0
    for batch in batches:
        try:
            rows = to_records(batch, heatmaps, start, sweep=False)
        except HeatmapWriteError as err:
            rows, first, failed = err.records, first or err.first, failed + err.failed
        yield rows
        start += len(batch)
    if failed:
        raise HeatmapWriteError(first, failed, [])


def print_records(records: list[dict], as_json: bool = False) -> None:
    """The records on stdout: a JSON list (``--json``), or a table."""
    if as_json:
        sys.stdout.write(json.dumps(records) + "\n")
    else:
        print_table(records)


def _write_lines(records: list[dict]) -> None:
    sys.stdout.write("".join(json.dumps(record) + "\n" for record in records))
    sys.stdout.flush()  # a reader of the pipe sees each batch as it finishes


def print_streamed(
    batches: Iterable[list[dict]], output: Literal["table", "json", "jsonl"] = "table"
) -> None:
    """Print batches of records on stdout: ``jsonl`` writes one record a line as each batch
    comes (nothing is kept), ``json`` (a list) and ``table`` print them all at the end. When
    heatmaps could not be written, every record is printed first (the error's too), then the
    one-line error is raised: the command exits non-zero once every score is out."""
    kept: list[dict] = []
    failed: HeatmapWriteError | None = None
    try:
        for rows in batches:
            if output == "jsonl":
                _write_lines(rows)
            else:
                kept.extend(rows)
    except HeatmapWriteError as err:
        failed = err
        if output == "jsonl":
            _write_lines(err.records)
        else:
            kept.extend(err.records)
    if output != "jsonl":
        print_records(kept, output == "json")
    if failed is not None:
        raise failed


def print_scored(score: Callable[[], list[dict]], as_json: bool = False) -> None:
    """Run ``score`` and print its records (``print_streamed``, as a JSON list or a table)."""

    def one_batch() -> Iterator[list[dict]]:
        yield score()

    print_streamed(one_batch(), "json" if as_json else "table")


def print_table(records: list[dict], title: str = "InCTRL anomaly scores") -> None:
    """A readable table of the scalar scores (higher = more anomalous) on stdout; for a
    calibrated category the p-value and decision come right after the score, and the
    threshold under the table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (higher = more anomalous)")
    table.add_column("image", overflow="fold", ratio=1, min_width=16)
    table.add_column("score", justify="right")
    calibrated = any(record.get("p_value") is not None for record in records)
    if calibrated:
        table.add_column("p-value", justify="right")
        table.add_column("decision", min_width=len("ANOMALOUS"), no_wrap=True)
    for header in ("holistic", "image res.", "text", "max patch"):
        table.add_column(header, justify="right")
    for record in records:
        score, *parts = (f"{record[n]:.4f}" for n in SCALAR_FIELDS)
        decision = [_p_value_cell(record.get("p_value")), _decision_cell(record.get("anomalous"))]
        table.add_row(record["image"], score, *(decision if calibrated else []), *parts)
    # One threshold per run: the calibration's at the false-positive rate asked for.
    threshold = next((r["threshold"] for r in records if r.get("threshold") is not None), None)
    if threshold is not None:
        table.caption = f"ANOMALOUS: a score above the threshold {threshold:.4f}"
    Console().print(table)


def _p_value_cell(p_value: float | None) -> str:
    return "-" if p_value is None else f"{p_value:.3g}"


def _decision_cell(anomalous: bool | None) -> str:
    return "-" if anomalous is None else ("ANOMALOUS" if anomalous else "normal")
