"""File helpers shared by everything that writes: atomic writes, staging folders, the sweep of
temporaries that dead writers left, one-line messages for failed writes, and content digests.

Every temporary we make sits beside its target and is named after it and the writer's pid:
``.<target>.<pid>.<random>.tmp`` (a file), ``.<target>.<pid>.<random>.partial/`` (a folder being
filled) and ``.<target>.<pid>.<random>.old/`` (a replaced folder, until the new one is in
place). The next write of the same target removes those of writers that no longer run.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from inctrl_runtime.errors import InputError

# What makes a folder a bundle: a manifest file of this format (``inctrl_runtime.manifest``
# reads the rest of it).
MANIFEST = "manifest.json"
FORMAT = "inctrl.bundle"

TEMPORARY = ".tmp"
STAGING = ".partial"
REPLACED = ".old"
# Temporaries named without a pid (releases before pids were added) are swept by age alone.
STALE_AFTER_S = 24 * 60 * 60

# ``.<target>.<pid>.<random><kind>`` and the older ``.<target>.<random><kind>``; the random
# part is tempfile's (8 of [a-z0-9_]).
_KIND = r"[a-z0-9_]{8}(?P<kind>\.tmp|\.partial|\.old)"
_WITH_PID = re.compile(r"\.(?P<target>.+)\.(?P<pid>[0-9]+)\." + _KIND)
_WITHOUT_PID = re.compile(r"\.(?P<target>.+)\." + _KIND)

# errno -> (what went wrong, what to do), for writes that fail for reasons a user can fix.
_WRITE_FAILURES = {
    errno.ENOSPC: ("no space left", "free space or choose another folder"),
    errno.EDQUOT: ("disk quota exceeded", "free space or choose another folder"),
    errno.EFBIG: ("file too large for its file system", "choose another folder"),
    errno.EROFS: ("read-only file system", "choose a writable folder"),
    errno.EACCES: ("permission denied", "check the permissions or choose another folder"),
    errno.EPERM: ("operation not permitted", "check the permissions or choose another folder"),
    errno.ENOTDIR: ("a file is in the way of a folder", "choose another path"),
    errno.EEXIST: ("a file is in the way of a folder", "choose another path"),
    errno.EISDIR: ("a folder is in the way of a file", "choose another file name"),
    errno.ENAMETOOLONG: ("name too long", "choose a shorter name"),
}


class WriteError(InputError):
    """A write that failed for a reason a user can fix (disk full, read-only, ...): one line."""

    def __init__(self, message: str, cause: OSError) -> None:
        super().__init__(message)
        self.cause = cause


def write_error_message(err: OSError, path: str | os.PathLike | None = None) -> str | None:
    """The one line a user sees for a failed write: ``<what> writing <path>; <what to do>``
    (e.g. "no space left writing out/a.png; free space or choose another folder"), or None for
    an errno that is no user's to fix. Without ``path``, the error's own file name is quoted."""
    if err.errno not in _WRITE_FAILURES:
        return None
    what, todo = _WRITE_FAILURES[err.errno]
    if path is not None:
        return f"{what} writing {path}; {todo}"
    return f"{what}: {err.filename}; {todo}" if err.filename else f"{what}; {todo}"


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a failed write inside the block (disk full, read-only, ...) into a WriteError
    naming ``path``, the file or folder being written (an inner writer's is renamed to it: a
    bundle's staging files are named by the bundle)."""
    try:
        yield
    except WriteError as err:
        raise WriteError(write_error_message(err.cause, path), err.cause) from err.cause
    except OSError as err:
        message = write_error_message(err, path)
        if message is None:
            raise
        raise WriteError(message, err) from err


def make_folder(path: str | os.PathLike) -> Path:
    """Create a folder and its parents if missing (failures as one line naming it)."""
    folder = Path(path)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _writer_alive(pid: int) -> bool:
    if pid <= 0:  # os.kill(0, ...) would signal our own process group
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:
        return False
    return True


def _parse(entry: str, targets: Collection[str]) -> tuple[str, str, int | None] | None:
    """(target, kind, pid or None) of one of our temporaries beside ``targets``, else None."""
    for pattern in (_WITH_PID, _WITHOUT_PID):
        match = pattern.fullmatch(entry)
        if match and match["target"] in targets:
            pid = match.groupdict().get("pid")
            return match["target"], match["kind"], None if pid is None else int(pid)
    return None


def sweep_stale(
    folder: str | os.PathLike, targets: Collection[str], max_age_s: float = STALE_AFTER_S
) -> None:
    """Remove the temporaries of ``targets`` (names in ``folder``) that dead writers left: those
    whose pid no longer runs, and those named without a pid that are older than ``max_age_s``.
    A live writer's are never touched. A replaced folder (``.old/``) whose target is missing
    (its writer died between the two renames) is put back, never removed.

    Best effort: what cannot be removed stays, and the write goes on.
    """
    folder = Path(folder)
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        parsed = _parse(entry.name, targets) if entry.name.startswith(".") else None
        if parsed is None:
            continue
        target, kind, pid = parsed
        with contextlib.suppress(OSError):
            if pid is not None:
                if _writer_alive(pid):
                    continue
            elif now - entry.stat(follow_symlinks=False).st_mtime < max_age_s:
                continue
            held = Path(entry.path) / target
            if kind == REPLACED and not (folder / target).exists() and held.exists():
                os.replace(held, folder / target)
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, sweep: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    Readers never see a half-written file, and a failure leaves nothing behind. A failed write
    (disk full, read-only, ...) is a WriteError naming ``path``. ``sweep``: first
    remove the temporaries of ``path`` that dead writers left (``sweep_stale``); a caller
    writing many files into one folder sweeps it once instead.
    """
    target = Path(path)
    with writing(target):
        make_folder(target.parent)
        if sweep:
            sweep_stale(target.parent, [target.name])
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{target.name}.{os.getpid()}.", suffix=TEMPORARY, dir=target.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            yield tmp
            # mkstemp makes the file private (0600); give it the permissions a plain open() would.
            os.chmod(tmp, 0o666 & ~_umask())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)


def new_staging_folder(target: str | os.PathLike, suffix: str = STAGING) -> Path:
    """Create a hidden folder beside ``target``, ``.<target>.<pid>.<random><suffix>``, with the
    permissions of a plain mkdir, once the stale temporaries of ``target`` are swept. Failures
    are WriteErrors naming ``target``."""
    target = Path(target)
    with writing(target):
        parent = make_folder(target.parent)
        sweep_stale(parent, [target.name])
        folder = Path(
            tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix, dir=parent)
        )
        folder.chmod(0o777 & ~_umask())  # mkdtemp's folder is private
    return folder


@contextlib.contextmanager
def staging_folder(target: str | os.PathLike) -> Iterator[Path]:
    """A new staging folder for ``target`` (``new_staging_folder``), removed with whatever is
    left in it when the block ends: build a folder in it, then rename it onto ``target``.
    Failed writes in the block are WriteErrors naming ``target``."""
    folder = new_staging_folder(target)
    try:
        with writing(target):
            yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, value: object, default=None) -> None:
    """Write ``value`` as indented JSON (one trailing newline), atomically."""
    write_text(path, json.dumps(value, indent=1, default=default) + "\n")


def is_bundle(folder: Path) -> bool:
    """Whether a folder is an inctrl bundle: its ``manifest.json`` says so."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _bundle_below(
    folder: Path, depth: int | None, itself: bool = True, own: Collection[str] = ()
) -> Path | None:
    """A bundle at ``folder`` (unless not ``itself``) or below it, ``depth`` levels down at
    most (None: all), but for the bundles at the relative paths ``own``."""
    for top, folders, _ in os.walk(folder):
        here = Path(top)
        relative = here.relative_to(folder)
        if relative.as_posix() in own:
            folders.clear()  # the command's own copy, and what it holds
        elif (itself or here != folder) and is_bundle(here):
            return here
        elif depth is not None and len(relative.parts) >= depth:
            folders.clear()
    return None


def check_output_path(
    path: str | os.PathLike,
    option: str,
    replaces: bool = False,
    may_be_bundle: bool = False,
    own: Collection[str] = (),
) -> None:
    """Refuse, in one line and before anything is written, an output path that is a bundle,
    lies inside one, or holds one: a bundle's files and its ``references/`` and ``engines/``
    are written only by the bundle's own commands. ``may_be_bundle``: the path may itself be
    a bundle (``inctrl-export onnx --force`` replaces one); ``own``: where, relative to the
    path, the command's earlier output keeps a copy of a bundle (an exported Triton repository:
    ``inctrl/bundle``). ``replaces``: the command replaces what is there, so every folder
    below it is looked through; otherwise its first two levels (where a folder of outputs
    would hold a bundle by mistake)."""
    target = Path(path).resolve()
    what = "replacing it" if replaces else "writing there"
    for folder in target.parents:
        if is_bundle(folder):
            raise InputError(
                f"{option} {path}: lies inside the bundle {folder}, which {what} would change; "
                "name a path outside every bundle"
            )
    if not target.is_dir():
        return
    itself = not (may_be_bundle and is_bundle(target))
    found = _bundle_below(target, None if replaces else 2, itself, own)
    if found is not None:
        raise InputError(
            f"{option} {path}: holds the bundle {found}, which {what} would delete or change; "
            "name a path outside every bundle"
        )


def check_output_paths(paths: dict[str, str | os.PathLike | None]) -> None:
    """``check_output_path`` for each option's path that is given (None, and ``-`` for stdout,
    are not paths)."""
    for option, path in paths.items():
        if path is not None and str(path) != "-":
            check_output_path(path, option)


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
