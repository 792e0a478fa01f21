"""Every command line's help reads well in an 80-column terminal: each command's one-line
summary (what ``--help`` lists) is one short sentence, and no line of any help is wider than
the terminal."""

from __future__ import annotations

import inspect

import click
import pytest
import typer

from helpers import run_main

COLUMNS = 80
# A summary is one sentence on one line: the commands panel wraps it at word boundaries, but a
# line break written into it stays, mid-sentence.
SUMMARY = 100


def apps() -> dict[str, tuple[typer.Typer, object]]:
    """Each command line's typer app and main."""
    from inctrl.cli import main as inctrl_main
    from inctrl.cli.common import app as inctrl_app
    from inctrl_bench.cli import app as bench_app
    from inctrl_bench.cli import main as bench_main
    from inctrl_export.cli import app as export_app
    from inctrl_export.cli import main as export_main
    from inctrl_runtime.cli import main as run_main_
    from inctrl_runtime.cli.common import app as run_app

    return {
        "inctrl": (inctrl_app, inctrl_main),
        "inctrl-export": (export_app, export_main),
        "inctrl-run": (run_app, run_main_),
        "inctrl-bench": (bench_app, bench_main),
    }


def commands(group: click.Command, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Every command of a click group, by its words, with its help text."""
    found = {path: group.help or ""}
    for name, command in getattr(group, "commands", {}).items():
        found |= commands(command, (*path, name))
    return found


@pytest.mark.unit
@pytest.mark.parametrize("program", ["inctrl", "inctrl-export", "inctrl-run", "inctrl-bench"])
def test_each_command_has_a_one_line_summary(program: str) -> None:
    app, _ = apps()[program]
    listed = {words: text for words, text in commands(typer.main.get_command(app)).items() if words}
    for words, text in listed.items():  # each as a panel lists it (the program's own: a title)
        summary = inspect.cleandoc(text).split("\n\n")[0]
        assert summary, (program, words)
        assert "\n" not in summary and len(summary) <= SUMMARY, (program, words, summary)


@pytest.mark.cli
@pytest.mark.parametrize("program", ["inctrl", "inctrl-export", "inctrl-run", "inctrl-bench"])
def test_help_fits_an_80_column_terminal(program: str, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", str(COLUMNS))
    app, main = apps()[program]
    for words in commands(typer.main.get_command(app)):
        shown = run_main(main, *words, "--help")
        assert shown.code == 0, (words, shown.err)
        wide = [line for line in shown.out.splitlines() if len(line) > COLUMNS]
        assert not wide, (program, words, wide)
