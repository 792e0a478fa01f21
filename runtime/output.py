"""The output writers: JSON records, heatmap and mask files, and tables on the terminal.

``inctrl score`` and ``inctrl-run score`` both go ``to_records`` -> ``print_streamed``
(``inctrl-run`` batch by batch, through ``record_batches``), so their JSON is the same (the
records of ``inctrl_runtime.results``), heatmaps are drawn on the pictures decoded for scoring,
not read from disk again, pictures are named after their images (``output_names``), and a
failed picture write still shows the scores.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path, PurePath
from typing import Literal

from PIL import Image

from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path, check_output_path, make_folder, sweep_stale
from inctrl_runtime.results import SCALAR_FIELDS, Result

PathLike = str | os.PathLike


class PictureWriteError(InputError):
    """Heatmaps or masks that could not be written (every score was, nonetheless): the first
    failure's one line and how many failed, with the records (and the pictures that were
    written) for the command line to print first."""

    def __init__(self, first: str, failed: int, records: list[dict]) -> None:
        plural = "s" if failed != 1 else ""
        super().__init__(f"{first} ({failed} picture{plural} not written; every score is printed)")
        self.first, self.failed, self.records = first, failed, records


def check_picture_folders(heatmaps: PathLike | None, masks: PathLike | None = None) -> None:
    """Refuse a ``--heatmaps`` or ``--masks`` that names an existing file, a place in a bundle
    (``files.check_output_path``), or the same folder as the other (their files share names),
    before any scoring work."""
    for option, folder in (("--heatmaps", heatmaps), ("--masks", masks)):
        if folder is None:
            continue
        check_output_path(folder, option)
        if Path(folder).exists() and not Path(folder).is_dir():
            raise InputError(
                f"{option} {folder}: is a file, not a folder; name a folder for the PNGs (it is "
                "created if missing)"
            )
    both = heatmaps is not None and masks is not None
    if both and Path(heatmaps).resolve() == Path(masks).resolve():
        raise InputError(
            f"--heatmaps and --masks both name {heatmaps}: a heatmap and a mask are named after "
            "their image; name two folders"
        )


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text).strip("._") or "image"


def output_names(images: Sequence[str]) -> list[str]:
    """The file name of each image's heatmap and mask (``Result.image`` names the image), in
    order: its file stem (``scratch_000.png`` for ``.../scratch_000.png``); when images of the
    run share a stem, every name is the parent folder's name and the stem (``scratch_000.png``
    for ``test/scratch/000.png``, ``good_000.png`` for ``test/good/000.png``); names still
    shared get ``_2``, ``_3``, ... after the second and later ones in run order. Characters
    other than letters, digits, ``.``, ``_`` and ``-`` become ``_``."""
    paths = [PurePath(image) for image in images]
    named = [_safe(path.stem) for path in paths]
    if len(set(named)) < len(named):
        named = [_safe(f"{path.parent.name}_{path.stem}") for path in paths]
    used: set[str] = set()
    unique = []
    for name in named:
        candidate, count = name, 1
        while candidate in used:
            count += 1
            candidate = f"{name}_{count}"
        used.add(candidate)
        unique.append(f"{candidate}.png")
    return unique


def to_records(
    scored: Sequence[Result],
    names: Sequence[str] | None = None,
    heatmaps: PathLike | None = None,
    masks: PathLike | None = None,
    sweep: bool = True,
) -> list[dict]:
    """The JSON records of ``inctrl score`` and ``inctrl-run score``, in order; with a
    ``heatmaps`` folder, a heatmap PNG per result there, drawn on the picture already decoded,
    and with a ``masks`` folder, its regions' mask PNG (``Result.mask``), each named ``names``
    (default ``output_names`` of these results) and its path in the record. ``sweep``: first
    remove what dead writers left of these files (``record_batches`` sweeps once for a whole
    run instead).

    A picture that cannot be written (disk full, read-only, a name in the way) costs only
    itself: the others are still written, and PictureWriteError (with every record) is raised
    once all were tried.
    """
    rows = [result.record() for result in scored]
    names = list(names) if names is not None else output_names([r.image for r in scored])
    failures: list[str] = []
    for key, root, draw in (("heatmap", heatmaps, Result.heatmap), ("mask", masks, Result.mask)):
        if root is not None:
            failures += _write_pictures(scored, rows, names, key, root, draw, sweep)
    if failures:
        raise PictureWriteError(failures[0], len(failures), rows)
    return rows


def _write_pictures(
    scored: Sequence[Result],
    rows: list[dict],
    names: Sequence[str],
    key: str,
    root: PathLike,
    draw: Callable[[Result], Image.Image],
    sweep: bool,
) -> list[str]:
    """Write ``draw(result)`` for each result as ``root/<name>`` and its path as ``row[key]``;
    the one-line reason of each picture that could not be written."""
    try:
        folder = make_folder(root)
    except InputError as err:
        return [str(err)] * len(rows)
    if sweep:
        sweep_stale(folder, names)  # once for the folder, not once per file
    failures = []
    for result, row, name in zip(scored, rows, names, strict=True):
        try:
            with atomic_path(folder / name, sweep=False) as tmp:
                draw(result).save(tmp, format="PNG")
        except InputError as err:
            failures.append(str(err))
        else:
            row[key] = str(folder / name)
    return failures


def record_batches(
    batches: Iterable[Sequence[Result]],
    images: Sequence[str],
    heatmaps: PathLike | None = None,
    masks: PathLike | None = None,
) -> Iterator[list[dict]]:
    """``to_records`` of each batch of a run over ``images`` (as ``Result.image`` names them), as
    the batch comes: picture names (``output_names``) made from the whole run, each folder
    swept once for all of them. A batch's Results (and their pictures) can go once its records
    are yielded. Pictures that could not be written cost no score: every batch's records come,
    and one PictureWriteError (the first failure, how many) is raised after the last."""
    names = output_names(images)
    for folder in (heatmaps, masks):
        if folder is not None:
            sweep_stale(folder, names)  # nothing to sweep in a missing folder
    start, first, failed = 0, "", 0
    for batch in batches:
        part = names[start : start + len(batch)]
        try:
            rows = to_records(batch, part, heatmaps, masks, sweep=False)
        except PictureWriteError as err:
            rows, first, failed = err.records, first or err.first, failed + err.failed
        yield rows
        start += len(batch)
    if failed:
        raise PictureWriteError(first, failed, [])


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
    failed: PictureWriteError | None = None
    try:
        for rows in batches:
            if output == "jsonl":
                _write_lines(rows)
            else:
                kept.extend(rows)
    except PictureWriteError as err:
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
    """A readable table of the scores (higher = more anomalous) on stdout. For a calibrated
    category the p-value, the decision and the number of regions come right after the score,
    in place of the score's parts (``--json`` has them all), and the thresholds go under the
    table; a monitored call's records end with the drift evidence (and ALARM)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} (higher = more anomalous)")
    table.add_column("image", overflow="fold", ratio=1, min_width=16)
    table.add_column("score", justify="right")
    calibrated = any(record.get("p_value") is not None for record in records)
    with_regions = any(record.get("regions") is not None for record in records)
    if calibrated:
        table.add_column("p-value", justify="right")
        table.add_column("decision", min_width=len("ANOMALOUS"), no_wrap=True)
    if with_regions:
        table.add_column("regions", justify="right")
    parts = ("max_patch_residual",) if calibrated else SCALAR_FIELDS[1:]
    for name in parts:
        table.add_column(_HEADERS[name], justify="right")
    monitored = any(record.get("drift") is not None for record in records)
    if monitored:
        table.add_column("drift", justify="right", no_wrap=True)
    for record in records:
        cells = [record["image"], f"{record['score']:.4f}"]
        if calibrated:
            cells += [_p_value_cell(record.get("p_value")), _decision_cell(record.get("anomalous"))]
        if with_regions:
            cells.append(_count_cell(record.get("regions")))
        cells += [f"{record[name]:.4f}" for name in parts]
        if monitored:
            cells.append(_drift_cell(record.get("drift")))
        table.add_row(*cells)
    # One threshold per run: the calibration's at the false-positive rate asked for.
    lines = []
    threshold = next((r["threshold"] for r in records if r.get("threshold") is not None), None)
    if threshold is not None:
        lines.append(f"ANOMALOUS: a score above the threshold {threshold:.4f}")
    cut = next(
        (r["region_threshold"] for r in records if r.get("region_threshold") is not None), None
    )
    if cut is not None:
        lines.append(f"region: pixels whose patch residual is above {cut:.4f}")
    table.caption = "\n".join(lines) or None
    Console().print(table)


_HEADERS = {
    "holistic_score": "holistic",
    "image_residual_score": "image res.",
    "text_score": "text",
    "max_patch_residual": "max patch",
}


def _drift_cell(drift: dict | None) -> str:
    if drift is None:
        return "-"
    return f"{drift['evidence']:.3g}" + (" ALARM" if drift["alarm"] else "")


def _count_cell(regions: list | None) -> str:
    return "-" if regions is None else str(len(regions))


def _p_value_cell(p_value: float | None) -> str:
    return "-" if p_value is None else f"{p_value:.3g}"


def _decision_cell(anomalous: bool | None) -> str:
    return "-" if anomalous is None else ("ANOMALOUS" if anomalous else "normal")
