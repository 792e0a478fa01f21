"""Interrupted writers leave nothing behind: SIGTERM and SIGINT unwind (staging folders and
temporaries are removed), and what a killed writer left (SIGKILL runs no cleanup) is swept by
the next write of the same target, by a dead writer's pid or by age, never a live writer's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from PIL import Image

import inctrl_runtime.cli
from inctrl_runtime.console import new_app, run_app
from inctrl_runtime.files import STALE_AFTER_S, sweep_stale

from helpers import random_images, run_main

CATEGORY = "candle"
RANDOM = "abcd_123"  # the 8 characters tempfile puts in a name


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def age(path: Path, seconds: float) -> Path:
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


# ------------------------------------------------------------------------ the sweep itself
@pytest.mark.unit
def test_sweep_removes_dead_and_old_temporaries_only(tmp_path: Path):
    dead, live = dead_pid(), os.getpid()
    (tmp_path / "x.npz").write_bytes(b"bank")
    planted = {
        f".x.npz.{dead}.{RANDOM}.tmp": False,  # a dead writer's file
        f".x.npz.{dead}.{RANDOM}.partial": False,  # ... and folder
        f".x.npz.{live}.{RANDOM}.tmp": True,  # a live writer's, however old
        f".x.npz.{RANDOM}.tmp": True,  # no pid, recent
        f".x.npz.{RANDOM[::-1]}.tmp": False,  # no pid, older than the age
        f".y.npz.{dead}.{RANDOM}.tmp": True,  # another target's
        f".x.npz.{dead}.notours": True,  # not of our naming
    }
    for name in planted:
        if name.endswith(".partial"):
            (tmp_path / name).mkdir()
        else:
            (tmp_path / name).write_bytes(b"half")
    age(tmp_path / f".x.npz.{live}.{RANDOM}.tmp", 2 * STALE_AFTER_S)
    age(tmp_path / f".x.npz.{RANDOM[::-1]}.tmp", STALE_AFTER_S + 60)

    sweep_stale(tmp_path, ["x.npz"])

    kept = {name for name, keep in planted.items() if keep}
    assert {p.name for p in tmp_path.iterdir()} == kept | {"x.npz"}
    assert (tmp_path / "x.npz").read_bytes() == b"bank"


@pytest.mark.unit
@pytest.mark.parametrize("target_there", [True, False])
def test_sweep_puts_back_a_replaced_bundle_whose_writer_died(tmp_path: Path, target_there: bool):
    """A writer killed between its two renames leaves the old bundle in ``.old/`` and no bundle:
    the sweep puts it back. With a bundle in place, the old one is removed."""
    aside = tmp_path / f".out.{dead_pid()}.{RANDOM}.old"
    (aside / "out").mkdir(parents=True)
    (aside / "out" / "manifest.json").write_text("old")
    if target_there:
        (tmp_path / "out").mkdir()
        (tmp_path / "out" / "manifest.json").write_text("new")

    sweep_stale(tmp_path, ["out"])

    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (tmp_path / "out" / "manifest.json").read_text() == ("new" if target_there else "old")


@pytest.mark.cli
def test_register_sweeps_what_a_killed_register_left(bundle: Path, tmp_path: Path):
    """SIGKILL runs no cleanup; a register killed mid-write leaves a temporary with its pid. The
    next register of the category removes it and an old one without a pid, and keeps the
    temporary of a writer still running (this test's own pid)."""
    references = bundle / "references"
    references.mkdir(exist_ok=True)
    killed = references / f".{CATEGORY}.npz.{dead_pid()}.{RANDOM}.tmp"
    running = references / f".{CATEGORY}.npz.{os.getpid()}.{RANDOM}.tmp"
    old = references / f".{CATEGORY}.npz.{RANDOM}.tmp"
    for path in (killed, running, old):
        path.write_bytes(b"half a bank")
    age(old, STALE_AFTER_S + 60)
    shots = [tmp_path / f"shot{i}.png" for i in range(2)]
    for path, array in zip(shots, random_images(2, seed=1), strict=True):
        Image.fromarray(array).save(path)

    outcome = run_main(
        inctrl_runtime.cli.main, "register", bundle, "--category", CATEGORY,
        *(a for shot in shots for a in ("-s", shot)),
    )  # fmt: skip

    assert outcome.code == 0, outcome.err
    assert sorted(p.name for p in references.iterdir()) == sorted([f"{CATEGORY}.npz", running.name])


# ------------------------------------------------------------------ SIGTERM / SIGINT unwind
@pytest.mark.unit
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_app_unwinds_on_a_signal_and_restores_handlers(signum: int):
    """The signal raises inside the command (its ``finally`` runs), the exit code is 128 +
    signum, and after ``run_app`` the previous handlers and ``showwarning`` are back."""
    app = new_app("t", "test", no_args_is_help=False)
    cleaned = []

    @app.command()
    def work() -> None:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # not reached: the handler raises at once
        finally:
            cleaned.append(True)

    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    showwarning = warnings.showwarning
    outcome = run_main(lambda argv: run_app(app, "t", argv))
    assert outcome.code == 128 + signum and cleaned == [True]
    assert "Traceback" not in outcome.err
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    assert warnings.showwarning is showwarning


@pytest.mark.cli
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_export_leaves_nothing(signum: int, tiny_checkpoint: Path, tmp_path: Path):
    """``inctrl-export onnx`` in a subprocess, signalled once its ``.partial`` staging folder
    exists: no staging folder, no output, nothing else beside it."""
    folder = tmp_path / "exports"
    folder.mkdir()
    code = "import sys; from inctrl_export.cli import main; main(sys.argv[1:])"
    args = [
        "onnx",
        "--out",
        str(folder / "out"),
        "-c",
        str(tiny_checkpoint),
        "--category",
        CATEGORY,
    ]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 240
        while not any(p.name.endswith(".partial") for p in folder.iterdir()):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no staging folder appeared"
            time.sleep(0.02)
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    # What matters is what is left (nothing), not the exit code (130/143 is run_app's test).
    assert b"Traceback" not in err, err.decode()
    assert list(folder.iterdir()) == []
    assert b"out: left as it was (the new bundle was not complete)" in err, err.decode()


@pytest.mark.cli
def test_a_signal_after_the_export_finished_is_not_a_silent_death(
    tiny_checkpoint: Path, tmp_path: Path
):
    """The program itself (``main()``, as the installed command runs it), signalled just after
    it printed its report: it has ended already (its teardown skipped), or it says it was
    interrupted; never the default action's silent death, and the bundle is whole."""
    code = "from inctrl_export.cli import main; main()"
    out = tmp_path / "out"
    args = ["onnx", "--out", str(out), "-c", str(tiny_checkpoint), "--category", CATEGORY]
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        for line in process.stderr:
            if b"parity PASSED" in line:
                break
        time.sleep(0.3)  # inside the second the interpreter's teardown took
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode in (0, 128 + signal.SIGTERM), (process.returncode, err.decode())
    assert process.returncode == 0 or b"interrupted by SIGTERM" in err
    assert (out / "manifest.json").is_file() and not list(tmp_path.glob(".out.*"))
