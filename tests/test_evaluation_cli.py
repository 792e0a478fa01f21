"""Evaluation's reports and command line: the JSON and Markdown files, `inctrl evaluate` end to
end, one-line refusals of bad input, and the plot of a report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from inctrl.cli import main
from inctrl.cli.evaluate import run_evaluate
from inctrl.evaluation import evaluate
from inctrl.evaluation_report import (
    OPERATING_COLUMNS,
    REGION_COLUMNS,
    SELECTION_COLUMNS,
    TABLE_COLUMNS,
)
from inctrl.prompt_files import write_prompt_file

from helpers import CATEGORIES, run_inctrl


def table_header(columns) -> str:
    return "| " + " | ".join(columns) + " |"


# ------------------------------------------------------------------------ reports, command line
@pytest.mark.cli
def test_json_and_markdown_files(eval_dir, tmp_path) -> None:
    result = run_evaluate(
        [eval_dir / "synth"],
        2,
        checkpoint=eval_dir / "tiny.safetensors",
        seeds=2,
        json_out=tmp_path / "out" / "report.json",
        markdown_out=tmp_path / "out" / "report.md",
    )
    assert json.loads((tmp_path / "out" / "report.json").read_text()) == result.to_dict()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["report.json", "report.md"]
    data = result.to_dict()
    assert data["settings"]["seeds"] == [0, 1] and data["settings"]["shots"] == 2
    assert data["mean"]["auroc"]["mean"] == pytest.approx(result.auroc.mean)
    lines = (tmp_path / "out" / "report.md").read_text().splitlines()
    assert lines[0].startswith("InCTRL evaluation of") and "k = 2" in lines[0]
    assert lines[2] == table_header(TABLE_COLUMNS)
    fabric = result.categories[0]
    assert lines[4] == (
        f"| synth_fabric | {fabric.auroc.mean:.3f} ± {fabric.auroc.std:.3f} | "
        f"{fabric.auprc.mean:.3f} ± {fabric.auprc.std:.3f} | "
        f"{fabric.pixel_auroc.mean:.3f} ± {fabric.pixel_auroc.std:.3f} | "
        f"{fabric.aupro.mean:.3f} ± {fabric.aupro.std:.3f} | 3 / 5 |"
    )
    assert lines[6].startswith(f"| mean | {result.auroc.mean:.3f} ± ") and lines[6].endswith(
        "| 6 / 10 |"
    )
    # Then the prompt choice, the operating points and the regions at them, each a title and a
    # table of 2 + 3 rows.
    assert lines[8].startswith("Prompt choice") and lines[10] == table_header(SELECTION_COLUMNS)
    choice = fabric.selection
    assert lines[12] == (
        f"| synth_fabric | {choice.selected:.3f} | {fabric.auroc} | {choice.random_min:.3f} |"
    )
    assert lines[16].startswith("Operating points") and lines[18] == table_header(OPERATING_COLUMNS)
    assert lines[20] == "| synth_fabric | 4 | - | - | - |"  # 6 train/good less 2 prompts
    assert lines[22] == "| mean | 8 | - | - | - |"
    assert lines[24].startswith("Regions at target") and lines[26] == table_header(REGION_COLUMNS)
    assert lines[28] == "| synth_fabric | - | - | - |"  # 4 calibration images: no thresholds
    assert lines[30] == "| mean | - | - | - |" and len(lines) == 31


@pytest.mark.cli
def test_command_end_to_end(eval_dir, model, samples, tmp_path) -> None:
    checkpoint = str(eval_dir / "tiny.safetensors")
    common = ["evaluate", "-c", checkpoint, "--data", str(eval_dir / "synth"), "--shots", "2"]
    result = run_inctrl(*common, "--seeds", "2", "--json", "-", "--markdown", "r.md", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = evaluate(model, samples, shots=2, seeds=(0, 1), checkpoint_name=checkpoint)
    assert printed["settings"] == expected.to_dict()["settings"]
    assert printed["mean"]["auroc"] == pytest.approx(expected.auroc._asdict())
    assert printed["mean"]["pixel_auroc"] == pytest.approx(expected.pixel_auroc._asdict())
    assert printed["mean"]["aupro"] == pytest.approx(expected.aupro._asdict())
    assert (tmp_path / "r.md").read_text() == expected.to_markdown()

    table = run_inctrl(*common, "--seeds", "1", "--no-pixel", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "synth_fabric" in table.stdout and "mean" in table.stdout
    assert "± 0.000" in table.stdout and "3 / 5" in table.stdout
    assert "coverage AUROC" in table.stdout and "Operating points" in table.stdout
    assert "Regions at target" not in table.stdout  # --no-pixel: no masks read


@pytest.fixture(scope="module")
def bad_inputs(eval_dir) -> Path:
    """A category without anomalies; prompt folders that are empty, hold k = 2, or garbage."""
    root = eval_dir / "bad"
    for split in ("train", "test"):
        source = eval_dir / "synth" / "synth_fabric" / split / "good"
        shutil.copytree(source, root / "only_good" / "widget" / split / "good")
    (root / "empty").mkdir()
    prompts = torch.zeros(2, 3, 240, 240)
    for category in CATEGORIES:
        write_prompt_file(root / "k2" / f"{category}.pt", prompts)
        (root / "garbage").mkdir(exist_ok=True)
        (root / "garbage" / f"{category}.pt").write_bytes(b"junk" * 16)
    return root


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--data", "bad/only_good", "--shots", "2"], "'widget': no anomalous test images"),
        (["--data", "synth", "--shots", "7"], "train/good holds only 6"),
        (["--data", "synth", "--shots", "2", "--prompts", "bad/empty"], "synth_fabric.pt: no such"),
        (["--data", "synth", "--shots", "3", "--prompts", "bad/k2"], "but --shots is 3"),
        (["--data", "synth", "--shots", "2", "--prompts", "bad/garbage"], "not a readable torch"),
        (["--data", "synth", "--shots", "2", "--seeds", "0"], "--seeds"),
        (["--data", "synth"], "no --shots"),
        (["--shots", "2"], "no --data"),
        (["--data", "nowhere", "--shots", "2"], "nowhere: no such data folder"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(eval_dir, bad_inputs, args, message, capsys, monkeypatch):
    monkeypatch.chdir(eval_dir)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "-c", "tiny.safetensors", "--json", "-", *args])
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.cli
def test_bad_input_in_a_real_process(eval_dir, bad_inputs) -> None:
    args = ["evaluate", "-c", "tiny.safetensors", "--data", "bad/only_good", "--shots", "2"]
    result = run_inctrl(*args, cwd=eval_dir)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("error: category 'widget': no anomalous test images")
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


@pytest.mark.unit
def test_plot_shows_every_category(report, tmp_path) -> None:
    from PIL import Image

    from inctrl.plots import plot_report

    plot_report(report, tmp_path / "plots" / "report.png")
    assert [p.name for p in (tmp_path / "plots").iterdir()] == ["report.png"]
    with Image.open(tmp_path / "plots" / "report.png") as picture:
        assert picture.format == "PNG"
        # one column (ROC above, histogram below) per category
        assert picture.width > picture.height * 0.8 * len(report.categories) / 2


@pytest.mark.cli
def test_the_report_shows_each_category_s_first_run(eval_dir, tmp_path) -> None:
    page = tmp_path / "evaluation.html"
    result = run_evaluate(
        [eval_dir / "synth"], 2, checkpoint=eval_dir / "tiny.safetensors", seeds=2, report=page
    )
    text = page.read_text()
    assert text.count('<h2 class="section">') == len(result.categories) == len(CATEGORIES)
    for category in result.categories:
        first = category.runs[0]  # the first seed's draw: its AUROC, its test images
        assert f"{category.category}</h2>" in text
        assert f"Against the labels (AUROC {first.auroc:.3f})" in text
        for prompt in first.prompts:
            assert f"{Path(prompt).name}</figure>" in text
    cards = sum(len(category.images) for category in result.categories)
    assert text.count('class="card"') == text.count("data:image/jpeg;base64,") == cards
    # 4 calibration images are too few for a rate of 0.1: no decisions, said so
    assert "too few calibration images for this rate" in text and 'data-flagged="true"' not in text
