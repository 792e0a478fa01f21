"""``inctrl demo ...``: what the embedded demo model is, and the one command that rebuilds it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console

from inctrl.cli.common import demo_app
from inctrl_runtime.console import interactive, stderr
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths


@demo_app.command("info")
def demo_info() -> None:
    """Show how the demo model was made and its AUROC on held-out synthetic categories."""
    from inctrl.demo import DEMO_CHECKPOINT

    record_path = DEMO_CHECKPOINT.with_suffix(".json")
    if not record_path.is_file():
        raise InputError(f"{record_path}: no demo record; rebuild the demo (inctrl demo build)")
    record = json.loads(record_path.read_text())
    console = Console()
    console.print(
        f"[bold]{record['model']}[/bold]  ({DEMO_CHECKPOINT}, "
        f"{record['size_bytes'] / 2**20:.1f} MB)"
    )
    console.print(f"rebuilt by: {record['command']}")
    console.print(record["held_out_markdown"], markup=False)


@demo_app.command("build")
def demo_build(
    work: Path = typer.Option(..., help="Scratch folder for the synthetic data and the run."),
    out: Path = typer.Option(None, help="Where to write the model (default: inside the package)."),
    seed: int = typer.Option(0, help="Seed of the data and of training."),
) -> None:
    """Rebuild the demo model from scratch (docs/demo.md says how long it takes).

    Synthesizes data, trains the heads (paper recipe), evaluates the held-out categories and
    writes the model and its record."""
    from inctrl.demo import DEMO_CHECKPOINT, build_demo

    check_output_paths({"--work": work, "--out": out})
    record = build_demo(
        work, out or DEMO_CHECKPOINT, seed=seed, console=stderr if interactive() else None
    )
    sys.stdout.write(record["held_out_markdown"] + "\n")
