"""Usage errors on every command line: an unknown option, a value of the wrong type, a missing
argument or an unknown command is one ``error:`` line naming what is wrong and where the help
is, exit 2, for all four programs (``console.run_app``); a program run bare still prints its
help."""

from __future__ import annotations

import pytest

from helpers import program_mains, run_main

pytestmark = pytest.mark.cli

MAINS = program_mains()
CASES = [
    ("inctrl-run", ["score", "b", "--fpr", "abc", "q.png"], ("'--fpr'", "valid number")),
    ("inctrl-run", ["register", "b", "--shots", "abc"], ("'--shots'", "valid integer")),
    ("inctrl-run", ["score", "b", "--threads", "1.5"], ("'--threads'", "valid integer")),
    ("inctrl-run", ["score", "b", "--bogus"], ("No such option: --bogus",)),
    ("inctrl-run", ["info"], ("Missing argument 'bundle'",)),
    ("inctrl-run", ["scor"], ("No such command 'scor'", "Did you mean 'score'")),
    ("inctrl", ["evaluate", "--shots", "abc"], ("'--shots'",)),
    ("inctrl", ["score", "--device"], ("'--device' requires an argument",)),
    ("inctrl-export", ["onnx", "--opset", "x"], ("'--opset'", "valid integer")),
    ("inctrl-export", ["tensorrt"], ("Missing argument",)),
    ("inctrl-bench", ["--batch"], ("'--batch' requires an argument",)),
    ("inctrl-bench", ["--repeats", "many"], ("'--repeats'", "valid integer")),
]


@pytest.mark.parametrize(("program", "args", "phrases"), CASES)
def test_a_usage_error_is_one_line(program: str, args: list[str], phrases: tuple) -> None:
    outcome = run_main(MAINS[program], *args)
    outcome.assert_refused(*phrases)
    assert "Usage:" not in outcome.err and "╭" not in outcome.err  # no box, no usage block


@pytest.mark.parametrize("program", ["inctrl", "inctrl-export", "inctrl-run"])
def test_a_bare_program_prints_its_help(program: str, capsys) -> None:
    outcome = run_main(MAINS[program])
    assert outcome.code == 2 and "error:" not in outcome.err
    assert "Commands" in outcome.out + outcome.err + capsys.readouterr().out
