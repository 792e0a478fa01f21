"""``inctrl prompts ...``: few-shot prompt sets, in the authors' ``.pt`` form and as our banks."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from inctrl.cli.common import ClipWeights, Device, ModelCheckpoint, prompts_app
from inctrl_runtime.console import status, warn
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import category_file
from inctrl_runtime.files import check_output_paths, write_json
from inctrl_runtime.selection import SELECTIONS, coverage_selection


def run_prompts_make(
    root: Path,
    category: str,
    shots: int,
    seed: int,
    out: Path,
    checkpoint: Path | None = None,
    clip_weights: Path | None = None,
    device: str = "cpu",
    select: str = "random",
    batch_size: int = 16,
) -> dict:
    """Pick k normal training images of a category and write them three ways into ``out``:
    ``<category>.pt`` (the authors' prompt file), ``<category>.bank.safetensors`` (our
    ReferenceBank, encoded by the given or demo model) and ``<category>.prompts.json`` (which
    images, how chosen, k). ``random`` is the draw ``inctrl evaluate`` makes for the same seed;
    ``coverage`` encodes every training image and takes the k that best cover their patch
    tokens (``inctrl_runtime.selection``, as ``inctrl-run register --pool``)."""
    import torch

    from inctrl.data import by_category, load_samples, normal_pool
    from inctrl.evaluation import draw_prompts
    from inctrl.loading import load_model
    from inctrl.prompt_files import write_prompt_file

    if shots < 1:
        raise InputError(f"--shots must be at least 1, got {shots}")
    if select not in SELECTIONS:
        raise InputError(f"unknown --select {select!r}: choose {' or '.join(SELECTIONS)}")
    check_output_paths({"--out": out})
    paths = {
        "authors": category_file(out, category, ".pt"),
        "bank": category_file(out, category, ".bank.safetensors"),
        "listing": category_file(out, category, ".prompts.json"),
    }
    groups = by_category(load_samples([root]))
    if category not in groups:
        raise InputError(f"{root}: no category {category!r}; found: {', '.join(groups)}")
    pool = normal_pool(groups[category], category, split="train")
    if shots > len(pool):
        raise InputError(
            f"{root}: category {category!r} has {len(pool)} normal training images, fewer than "
            f"--shots {shots}"
        )
    with status("loading the model"):
        model = load_model(checkpoint, clip_weights, device, notice=warn)
    residual = None
    if select == "coverage":
        ordered = sorted(pool, key=lambda sample: sample.image_path)  # the pool, not its order
        with status(f"encoding {len(ordered)} training images"), torch.no_grad():
            files = [s.image_path for s in ordered]
            batches = [files[i : i + batch_size] for i in range(0, len(files), batch_size)]
            patches = torch.cat([model.encode(model.pixels(b)).patches for b in batches])
        selection = coverage_selection(patches.cpu().numpy(), shots)
        chosen = [ordered[i] for i in selection.indices]
        residual = selection.mean_residual
    else:
        chosen = draw_prompts(pool, shots, seed, category)
    with status("encoding prompts"):
        pixels = model.pixels([s.image_path for s in chosen])
        bank = model.reference(pixels)
    write_prompt_file(paths["authors"], pixels.cpu())
    bank.save(paths["bank"])
    listing = {
        "category": category,
        "shots": shots,
        "select": select,
        "seed": seed if select == "random" else None,
        "images": [s.image_path for s in chosen],
        "mean_residual": residual,
        "model": model.config.name,
        "files": {name: str(path) for name, path in paths.items()},
    }
    write_json(paths["listing"], listing)
    return listing


@prompts_app.command("make")
def prompts_make(
    root: Path = typer.Argument(..., help="MVTec-layout data set root or category folder."),
    category: str = typer.Option(
        None, "--category", help="Category to draw from.", show_default=False
    ),
    shots: int = typer.Option(
        None, "--shots", help="k, the number of normal images.", show_default=False
    ),
    seed: int = typer.Option(0, help="Seed of the draw (the same draw as `inctrl evaluate`)."),
    select: str = typer.Option(
        "random",
        "--select",
        help="random (the seeded draw of `inctrl evaluate`) or coverage (the k images that best "
        "cover the category's training images' patch tokens).",
    ),
    out: Path = typer.Option(None, "--out", help="Folder to write into.", show_default=False),
    checkpoint: ModelCheckpoint = None,
    clip_weights: ClipWeights = None,
    device: Device = "cpu",
) -> None:
    """Draw or select k normal training images of a category as a prompt set.

    Writes the authors' <category>.pt prompt file, our ReferenceBank and a JSON listing of the
    chosen images."""
    for value, flag in ((category, "--category"), (shots, "--shots"), (out, "--out")):
        if value is None:
            raise InputError(f"no {flag} given (see inctrl prompts make --help)")
    listing = run_prompts_make(
        root, category, shots, seed, out, checkpoint, clip_weights, device, select
    )
    sys.stdout.write(json.dumps(listing) + "\n")


@prompts_app.command("bank")
def prompts_bank(
    prompt_file: Path = typer.Argument(..., help="An authors' <category>.pt prompt file."),
    out: Path = typer.Option(
        None, "--out", help="ReferenceBank file to write.", show_default=False
    ),
    checkpoint: ModelCheckpoint = None,
    clip_weights: ClipWeights = None,
    device: Device = "cpu",
) -> None:
    """Encode the k images of an authors' .pt prompt file into our ReferenceBank."""
    from inctrl.loading import load_model
    from inctrl.prompt_files import read_prompt_file

    if out is None:
        raise InputError("no --out given: name the bank file, e.g. --out candle.bank.safetensors")
    check_output_paths({"--out": out})
    pixels = read_prompt_file(prompt_file)
    model = load_model(checkpoint, clip_weights, device, notice=warn)
    model.reference(pixels).save(out)
    sys.stdout.write(f"{out}\n")
