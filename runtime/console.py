"""What every command line of the project shares: stderr, progress, one-line errors, exit codes.

Progress and notes go to stderr (stdout may carry JSON); user mistakes print one line
(``error: ...``) and exit with code 2, never a traceback. SIGINT and SIGTERM unwind the stack
(every ``finally`` runs: staging folders and temporary files are removed) and exit with
128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Literal

import typer
from PIL import Image
from rich.console import Console

from inctrl_runtime.errors import InputError, one_line
from inctrl_runtime.files import write_error_message

EXIT_INPUT_ERROR = 2

stderr = Console(stderr=True)

# Options of the scoring commands (``inctrl score``, ``inctrl-run score``), declared once.
QueryImages = Annotated[
    list[Path] | None,
    typer.Argument(help="Query images to score (png, jpg, ..., npy).", show_default=False),
]
BatchSize = Annotated[int, typer.Option(help="Query images per encoder pass.")]
Heatmaps = Annotated[
    Path | None,
    typer.Option(
        help="Write a heatmap PNG per query here, named after its image: the patch residuals "
        "over the whole frame, regions outlined, the band the model does not see greyed.",
        show_default=False,
    ),
]
RegionFpr = Annotated[
    float | None,
    typer.Option(
        "--region-fpr",
        help="Rate of good parts that may get any defect region (default: --fpr).",
        show_default=False,
    ),
]
DriftDelta = Annotated[
    float,
    typer.Option(
        "--drift-delta",
        help="The drift monitor's false-alarm probability over the whole stream of good parts: "
        "it alarms when its evidence reaches 1/delta.",
    ),
]
TilesOption = Annotated[
    str | None,
    typer.Option(
        "--tiles",
        help="Cut each frame into ROWSxCOLUMNS overlapping square tiles, each scored as an "
        "image of its own (e.g. 2x2, 3x4): small defects and the edges a centre crop loses are "
        "seen. Add +whole (2x2+whole) to also score the frame's centred square whole, for "
        "defects as large as a tile. The frame's score is the largest patch residual over its "
        "views.",
        show_default=False,
    ),
]
HeatmapSize = Annotated[
    int,
    typer.Option(help="Longest side, in pixels, of a heatmap (larger frames are drawn smaller)."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")]
JsonlFlag = Annotated[
    bool,
    typer.Option("--jsonl", help="Print one JSON record a line as each batch is done."),
]
Output = Literal["table", "json", "jsonl"]


def output_format(as_json: bool, as_jsonl: bool) -> Output:
    """How records are printed: ``--json`` (one list at the end), ``--jsonl`` (a record a line
    as batches are done) or a table; both flags are a one-line error."""
    if as_json and as_jsonl:
        raise InputError(
            "--json and --jsonl exclude each other: --json prints one list at the end, --jsonl "
            "one record a line as batches are done"
        )
    return "jsonl" if as_jsonl else "json" if as_json else "table"


def new_app(name: str, help: str, no_args_is_help: bool = True) -> typer.Typer:
    """A typer app as all of ours are: help when run bare, no shell-completion installer, and no
    rich tracebacks (user mistakes are one line; anything else is a bug worth a plain trace)."""
    return typer.Typer(
        name=name,
        help=help,
        no_args_is_help=no_args_is_help,
        add_completion=False,
        pretty_exceptions_enable=False,
    )


def interactive() -> bool:
    """Progress bars and spinners go to stderr, and only when a person is watching."""
    return sys.stderr.isatty()


def status(message: str) -> contextlib.AbstractContextManager:
    """A spinner on stderr while something slow runs (nothing when not interactive)."""
    return stderr.status(message, spinner="dots") if interactive() else contextlib.nullcontext()


@contextlib.contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr while a person watches; yields its update (the number done)."""
    if not interactive():
        yield lambda done: None
        return
    from rich.progress import Progress

    # Lines for a pipe go to stdout as they come (--jsonl); lines for the terminal above the bar.
    with Progress(console=stderr, transient=True, redirect_stdout=sys.stdout.isatty()) as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)


def say(message: str) -> None:
    """One unwrapped line on stderr (never on stdout, which may carry JSON)."""
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    """A note a person should see, on one line of stderr."""
    say(f"note: {message}")


def require_category(category: str | None) -> str:
    """The --category every scoring command needs."""
    if not category:
        raise InputError("no --category given: name the product category, e.g. --category candle")
    return category


def require_files(paths: Sequence[Path], what: str) -> None:
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such {what} file")


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived. Raised from the signal handler, it unwinds the stack as
    KeyboardInterrupt would, but click does not turn it into "Aborted!" and exit 1."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _interrupt(signum: int, frame) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_unwind() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted inside the block; the previous handlers return
    after it (tests run ``main`` in their own process)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers, and only it receives signals
        return
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in previous:
        signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@contextlib.contextmanager
def _warnings_as_notes() -> Iterator[None]:
    def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, Image.DecompressionBombWarning):
            return  # the image's size guard refuses it in its own line (preprocess.check_size)
        warn(str(message))

    previous, warnings.showwarning = warnings.showwarning, show_warning
    try:
        yield
    finally:
        warnings.showwarning = previous


def _refuse(message: str) -> int:
    say(f"error: {one_line(message)}")
    return EXIT_INPUT_ERROR


def _click_errors() -> tuple[type[Exception], ...]:
    """The exception base of the click that typer runs on: typer 0.2x carries its own copy
    (``typer._click``), older typer raises click's own; both where both exist."""
    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(module).ClickException)
    return tuple(found)


def _usage_error_line(err: Exception) -> str:
    """A usage error (an unknown option, a value of the wrong type, a missing argument, an
    unknown command) as one line: click's words and where to read the command's help."""
    message = " ".join(err.format_message().split()).rstrip(".")
    context = getattr(err, "ctx", None)
    if context is not None:
        message += f" (see {context.command_path} --help)"
    return message


def run_app(app: typer.Typer, prog_name: str, argv: Sequence[str] | None = None) -> None:
    """Run a typer app, turning user mistakes (a usage error, a bad input, a write that fails
    for a reason a user can fix: disk full, read-only, ...) into one line and exit code 2,
    SIGINT and SIGTERM into exit code 128 + signum once every ``finally`` ran, and Python
    warnings (a provider fallback, a demo model) into notes. A program run bare prints its help
    (exit 2), as typer does.

    Run as the program itself (``argv`` None), the process ends as soon as the command is done
    and its output flushed: the interpreter's teardown (freeing torch and onnxruntime, about a
    second) runs with the default signal actions, so a SIGTERM then would end it silently after
    the work was done, and nothing is left to free that the operating system does not."""
    code = _run_app(app, prog_name, argv)
    if argv is not None:
        sys.exit(code)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run_app(app: typer.Typer, prog_name: str, argv: Sequence[str] | None) -> int:
    """``run_app``'s work: the exit code."""
    with _warnings_as_notes(), _signals_unwind():
        try:
            code = app(args=argv, prog_name=prog_name, standalone_mode=False)
        except _click_errors() as err:
            if type(err).__name__ == "NoArgsIsHelpError":  # the help is printed: no error
                return EXIT_INPUT_ERROR
            if getattr(err, "exit_code", EXIT_INPUT_ERROR) != EXIT_INPUT_ERROR:
                say(f"error: {one_line(' '.join(err.format_message().split()))}")
                return err.exit_code
            return _refuse(_usage_error_line(err))
        except Interrupted as interrupted:
            say(f"interrupted by {interrupted}")
            return 128 + interrupted.signum
        except InputError as err:
            return _refuse(str(err))
        except OSError as err:
            message = write_error_message(err)
            if message is None:
                raise
            return _refuse(message)
    return code if isinstance(code, int) else 0  # ``typer.Exit(code)``: help, a failed check
