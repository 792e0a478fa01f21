"""``inctrl train``: train the adapter and heads on auxiliary data (one process or torchrun)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from inctrl.cli.common import Device, app
from inctrl.training.config import TrainConfig, is_main_process
from inctrl_runtime.console import interactive, stderr
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths

DEFAULTS = TrainConfig()


def print_summary(summary: dict) -> None:
    """A readable table of a finished run."""
    table = Table(title=f"training run in {summary['run_dir']}", show_header=False)
    table.add_column("what")
    table.add_column("value", overflow="fold")
    for key, value in summary.items():
        shown = f"{value:.4f}" if isinstance(value, float) else str(value)
        table.add_row(key.replace("_", " "), shown)
    Console().print(table)


@app.command("train")
def train_command(
    data: list[Path] = typer.Option(
        None,
        "--data",
        help="Training data: an MVTec-layout data set root, one category folder or one of the "
        "authors' JSON lists; repeat to combine. Needs normal and anomalous images.",
        show_default=False,
    ),
    out: Path = typer.Option(
        None,
        "--out",
        help="Run folder: epoch_NNN.safetensors, last.safetensors, train_state.safetensors, "
        "metrics.jsonl.",
        show_default=False,
    ),
    preset: str = typer.Option(
        None,
        help="Architecture. With --clip-weights: ViT-B-16-plus-240 (the default). Without: "
        "'tiny' or 'demo' (seeded backbones, for tests and the demo model).",
        show_default=False,
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Start from this InCTRL checkpoint (the authors' .pyth or ours); its heads train on.",
        show_default=False,
    ),
    clip_weights: Path = typer.Option(
        None,
        help="open_clip weights file of the backbone (laion400m_e32 for ViT-B-16-plus-240).",
        show_default=False,
    ),
    shots: int = typer.Option(
        DEFAULTS.shots, "--shots", "-k", help="Normal prompt images per query (k)."
    ),
    epochs: int = typer.Option(DEFAULTS.epochs, help="Epochs; with --resume, may grow."),
    steps_per_epoch: int = typer.Option(DEFAULTS.steps_per_epoch, help="Optimizer steps an epoch."),
    batch_size: int = typer.Option(
        DEFAULTS.batch_size,
        help="Queries a step, half normal, half anomalous (over all processes).",
    ),
    seed: int = typer.Option(DEFAULTS.seed, help="Same seed, same data, same weights."),
    loss: str = typer.Option(
        DEFAULTS.loss,
        help="'authors': their focal loss on probabilities taken as logits (to reproduce the "
        "paper); 'focal': the proper binary focal loss.",
    ),
    device: Device = "cpu",
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out with the same options."
    ),
    log_every: int = typer.Option(0, help="Also write a metrics line every N steps (0: never)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Train the adapter and heads on auxiliary data, as the authors do.

    The CLIP backbone stays frozen. Each query, normal or anomalous, meets k normal prompts of
    its category drawn at random; AdamW, focal loss; the defaults are the paper's. Under
    torchrun (e.g. torchrun --nproc_per_node 4 -m inctrl train ...) the same command trains
    with DistributedDataParallel.

    Example: inctrl train --data mvtec --clip-weights vit_b_16_plus_240.pt -k 2 --out runs/k2
    """
    if not data:
        raise InputError("no --data given: name a data set root, category folder or JSON list")
    if out is None:
        raise InputError("no --out given: name a folder for the run, e.g. --out runs/k2")
    check_output_paths({"--out": out})
    config = TrainConfig(
        shots=shots,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        batch_size=batch_size,
        seed=seed,
        loss=loss,
    )
    from inctrl.training import train

    summary = train(
        data,
        out,
        config,
        preset=preset,
        checkpoint=checkpoint,
        clip_weights=clip_weights,
        device=device,
        resume=resume,
        console=stderr if interactive() else None,
        log_every=log_every,
    )
    if not is_main_process():
        return
    if as_json:
        sys.stdout.write(json.dumps(summary) + "\n")
    else:
        print_summary(summary)
