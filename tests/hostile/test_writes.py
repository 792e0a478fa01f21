"""Writes that fail for a reason the user can fix (disk full, read-only file system, a file or
folder in the way) are one line and exit 2, leave nothing behind and change no bank or bundle;
a failed heatmap write still shows the scores; a failed ``--force`` export keeps the old bundle.

Full and read-only disks are a small tmpfs (``mount`` as root), skipped where mounting is refused.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

import inctrl.cli
import inctrl_export.cli
import inctrl_runtime.cli
from inctrl_runtime.console import new_app, one_line, run_app
from inctrl_runtime.files import STAGING

from helpers import (
    BUNDLE_CATEGORIES,
    Outcome,
    random_images,
    run_command,
    run_main,
    snapshot,
)

CATEGORY = BUNDLE_CATEGORIES[0]


# ---------------------------------------------------------------------------------- helpers
def query_pngs(folder: Path, count: int, seed: int, name: str = "image") -> list[Path]:
    """``count`` seeded PNG images in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{name}{i}.png" for i in range(count)]
    for path, array in zip(paths, random_images(count, seed=seed), strict=True):
        Image.fromarray(array).save(path)
    return paths


def fill(folder: Path) -> None:
    """Fill the file system that holds ``folder`` (a file ``filler`` in it), to ENOSPC."""
    chunk = bytes(1 << 16)
    with open(folder / "filler", "wb", buffering=0) as handle, pytest.raises(OSError) as raised:
        while True:
            handle.write(chunk)
    assert raised.value.errno == errno.ENOSPC


def read_only(folder: Path) -> None:
    """Remount the tmpfs at ``folder`` read-only."""
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of its own, to fill or make read-only; always unmounted after."""
    folder = tmp_path / "tmpfs"
    folder.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: cannot make a full or read-only file system")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs was refused ({mounted.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@pytest.fixture
def bundle_on_tmpfs(bundle: Path, tmpfs: Path, tmp_path: Path) -> Path:
    """The tiny bundle on the tmpfs, with ``candle`` registered (a bank whose bytes must stay)."""
    copy = Path(shutil.copytree(bundle, tmpfs / "bundle"))
    assert register(copy, query_pngs(tmp_path / "first", 2, seed=1)).code == 0
    assert (copy / "references" / f"{CATEGORY}.npz").is_file()
    return copy


def register(bundle: Path, shots: list[Path], category: str = CATEGORY) -> Outcome:
    args = [a for shot in shots for a in ("-s", shot)]
    return run_main(inctrl_runtime.cli.main, "register", bundle, "--category", category, *args)


ScoreCommand = Callable[..., Outcome]


@pytest.fixture(params=["inctrl-run", "inctrl"])
def score_command(request, bundle: Path, tiny_checkpoint: Path, tmp_path: Path) -> ScoreCommand:
    """``inctrl-run score`` (the bundle) or ``inctrl score`` (the checkpoint), two --shot images,
    the given arguments after them."""
    shots = [a for shot in query_pngs(tmp_path / "shots", 2, seed=3) for a in ("-s", shot)]
    if request.param == "inctrl-run":
        head = [inctrl_runtime.cli.main, "score", bundle]
    else:
        head = [inctrl.cli.main, "score", "-c", tiny_checkpoint]
    return lambda *args: run_main(*head, "--category", CATEGORY, *shots, *args)


# ------------------------------------------------------------------------------ register
@pytest.mark.cli
def test_register_on_a_full_disk_keeps_the_bank(bundle_on_tmpfs: Path, tmp_path: Path):
    fill(bundle_on_tmpfs)
    before = snapshot(bundle_on_tmpfs)
    outcome = register(bundle_on_tmpfs, query_pngs(tmp_path / "second", 2, seed=2))
    outcome.assert_refused("no space left writing", f"{CATEGORY}.npz", "free space")
    assert snapshot(bundle_on_tmpfs) == before  # the bank unchanged, no temporary left


@pytest.mark.cli
def test_register_on_a_full_disk_says_one_line_and_no_more(bundle_on_tmpfs: Path, tmp_path: Path):
    """In a process of its own, so that nothing printed at its exit (an unclosed file's
    warning at garbage collection) escapes: stderr is the one error line."""
    fill(bundle_on_tmpfs)
    shots = [a for shot in query_pngs(tmp_path / "second", 2, seed=2) for a in ("-s", str(shot))]
    done = run_command("inctrl_runtime.cli", "register", str(bundle_on_tmpfs), "--category",
                       CATEGORY, *shots)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [done.stderr.strip()] and "no space left" in done.stderr


@pytest.mark.cli
def test_register_on_a_read_only_disk_keeps_the_bank(
    bundle_on_tmpfs: Path, tmpfs: Path, tmp_path: Path
):
    before = snapshot(bundle_on_tmpfs)
    read_only(tmpfs)
    outcome = register(bundle_on_tmpfs, query_pngs(tmp_path / "second", 2, seed=2))
    outcome.assert_refused("read-only file system writing", f"{CATEGORY}.npz")
    assert snapshot(bundle_on_tmpfs) == before


# ------------------------------------------------------------------------------ heatmaps
@pytest.mark.cli
def test_heatmaps_naming_a_file_is_refused_before_scoring(
    score_command: ScoreCommand, tmp_path: Path
):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"not a folder")
    queries = query_pngs(tmp_path / "queries", 1, seed=4, name="query")
    outcome = score_command("--heatmaps", taken, "--json", *queries)
    outcome.assert_refused("--heatmaps", "is a file, not a folder")
    assert outcome.out == ""
    assert taken.read_bytes() == b"not a folder"


@pytest.mark.cli
def test_a_failed_heatmap_prints_the_scores_first(score_command: ScoreCommand, tmp_path: Path):
    """The second heatmap's name is taken by a folder: the first heatmap is written, both
    records are printed (the first with its heatmap), then the one-line error. The same image
    twice: both names take the folder, the second a ``_2``."""
    heatmaps = tmp_path / "heatmaps"
    (heatmaps / "queries_query0_2.png").mkdir(parents=True)
    queries = query_pngs(tmp_path / "queries", 1, seed=4, name="query") * 2
    outcome = score_command("--heatmaps", heatmaps, "--json", *queries)
    outcome.assert_refused("a folder is in the way of a file writing", "queries_query0_2.png")
    first, second = json.loads(outcome.out)
    assert first["heatmap"] == str(heatmaps / "queries_query0.png") and "heatmap" not in second
    assert second["score"] == pytest.approx(first["score"], abs=1e-6)
    written = sorted(p.name for p in heatmaps.iterdir())
    assert written == ["queries_query0.png", "queries_query0_2.png"]
    assert Image.open(heatmaps / "queries_query0.png").size[0] > 0


@pytest.mark.cli
def test_a_failed_heatmap_costs_no_score(score_command: ScoreCommand, tmp_path: Path):
    """A heatmap that cannot be written in the first batch: every later batch is still scored
    and its heatmaps written, every record is printed, and the error comes once, at the end."""
    heatmaps = tmp_path / "heatmaps"
    (heatmaps / "query1.png").mkdir(parents=True)
    queries = query_pngs(tmp_path / "queries", 6, seed=5, name="query")
    outcome = score_command("--heatmaps", heatmaps, "--batch-size", "2", "--json", *queries)
    outcome.assert_refused("heatmaps/query1.png", "1 picture not written", "every score is printed")
    records = json.loads(outcome.out)
    assert [Path(r["image"]).name for r in records] == [q.name for q in queries]
    assert [("heatmap" in r) for r in records] == [True, False, True, True, True, True]
    assert all(Path(r["heatmap"]).is_file() for r in records if "heatmap" in r)


@pytest.mark.cli
def test_heatmaps_on_a_full_disk_print_the_table_then_the_error(
    score_command: ScoreCommand, tmpfs: Path, tmp_path: Path
):
    queries = query_pngs(tmp_path / "queries", 2, seed=4, name="query")
    fill(tmpfs)
    outcome = score_command("--heatmaps", tmpfs / "heatmaps", *queries)
    outcome.assert_refused("no space left writing", "heatmaps/query0.png")
    assert "query0.png" in outcome.out and "query1.png" in outcome.out  # the table
    assert sorted(p.name for p in tmpfs.iterdir()) == ["filler", "heatmaps"]
    assert list((tmpfs / "heatmaps").iterdir()) == []  # no temporary left


@pytest.mark.cli
def test_heatmaps_on_a_read_only_disk_print_the_scores_then_the_error(
    score_command: ScoreCommand, tmpfs: Path, tmp_path: Path
):
    queries = query_pngs(tmp_path / "queries", 2, seed=4, name="query")
    (tmpfs / "heatmaps").mkdir()
    read_only(tmpfs)
    outcome = score_command("--heatmaps", tmpfs / "heatmaps", "--json", *queries)
    outcome.assert_refused("read-only file system writing", "heatmaps/query0.png")
    assert [r["image"] for r in json.loads(outcome.out)] == [str(q) for q in queries]
    assert list((tmpfs / "heatmaps").iterdir()) == []


# -------------------------------------------------------------------------------- export
def export(out: Path, checkpoint: Path, *args: str) -> Outcome:
    """``inctrl-export onnx`` of the tiny checkpoint, its progress lines ("  wrote ...") left
    out of stderr."""
    outcome = run_main(
        inctrl_export.cli.main, "onnx", "--out", out, "-c", checkpoint, "--category", CATEGORY,
        *args,
    )  # fmt: skip
    err = "".join(line for line in outcome.err.splitlines(True) if not line.startswith("  "))
    return Outcome(outcome.code, outcome.out, err)


@pytest.mark.cli
def test_export_on_a_full_disk_leaves_nothing(tmpfs: Path, tiny_checkpoint: Path):
    fill(tmpfs)
    outcome = export(tmpfs / "out", tiny_checkpoint)
    outcome.assert_refused("no space left writing", str(tmpfs / "out"), "free space")
    assert [p.name for p in tmpfs.iterdir()] == ["filler"]  # no staging folder, no output


@pytest.mark.cli
@pytest.mark.parametrize("failing", ["aside", "into place"])
def test_failed_force_export_keeps_the_old_bundle(
    failing: str, bundle: Path, tiny_checkpoint: Path, monkeypatch
):
    """One of the two renames of a ``--force`` export fails (moving the old bundle aside, or
    the new one into place): the old bundle stays as it was, and no ``.old/`` or ``.partial/``
    is left beside it."""
    before = snapshot(bundle.parent)
    rename = os.replace

    def replace(src, dst):
        fails = Path(src) == bundle if failing == "aside" else str(src).endswith(STAGING)
        if fails:
            raise PermissionError(errno.EACCES, "Permission denied", str(src))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    outcome = export(bundle, tiny_checkpoint, "--force", "--no-verify")
    outcome.assert_refused("permission denied writing", str(bundle))
    assert snapshot(bundle.parent) == before


# ---------------------------------------------------------------- one line, whatever it quotes
@pytest.mark.cli
@pytest.mark.parametrize("option", ["--category", "--shot"])
def test_a_newline_in_what_an_error_quotes_stays_on_one_line(
    option: str, bundle: Path, tmp_path: Path
):
    shot = query_pngs(tmp_path / "shots", 1, seed=5)[0]
    given = {"--category": CATEGORY, "--shot": shot, option: "a\nb\x1b[2J"}
    before = snapshot(bundle)
    outcome = run_main(
        inctrl_runtime.cli.main, "register", bundle, "--category", given["--category"],
        "-s", given["--shot"],
    )  # fmt: skip
    outcome.assert_refused("a\\nb\\x1b[2J")
    assert snapshot(bundle) == before


@pytest.mark.unit
def test_one_line_escapes_control_characters():
    assert one_line("a\nb\r\tc\u2028d\x00é") == "a\\nb\\r\\tc\\u2028d\\x00é"


@pytest.mark.unit
def test_run_app_maps_a_failed_write_that_reached_it():
    """An OSError no writer mapped (e.g. from a library writing a file) is one line if a user
    can fix it (it names the file), and stays a traceback if not (a bug, or the machine's)."""
    app = new_app("t", "test", no_args_is_help=False)
    raised = {"error": OSError(errno.ENOSPC, "No space left on device", "/full/model.onnx")}

    @app.command()
    def work() -> None:
        raise raised["error"]

    run_main(lambda argv: run_app(app, "t", argv)).assert_refused(
        "no space left: /full/model.onnx; free space"
    )
    raised["error"] = OSError(errno.EIO, "Input/output error", "/disk/x")
    with pytest.raises(OSError, match="Input/output"):
        run_main(lambda argv: run_app(app, "t", argv))
