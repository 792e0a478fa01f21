"""``inctrl-export tensorrt``: a bundle's graphs -> TensorRT engines for this GPU, checked."""

from __future__ import annotations

from pathlib import Path

import typer

from inctrl_export.cli.common import (
    Atol,
    ClipWeights,
    JsonReport,
    SourceCheckpoint,
    log_step,
    print_report,
)
from inctrl_runtime.console import say, status
from inctrl_runtime.files import check_output_paths


def tensorrt(
    bundle: Path = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx)."),
    checkpoint: Path = SourceCheckpoint,
    clip_weights: Path = ClipWeights,
    batch: str = typer.Option(
        "1,8,32",
        "--batch",
        help="Batch sizes of the engines' profile, MIN,OPT,MAX (MIN 1; OPT is tuned for), or "
        "one size. Larger batches are split when scored.",
    ),
    shots: str = typer.Option(
        "1,2,8",
        "--shots",
        help="Prompt counts k of the head's profile, MIN,OPT,MAX or one k (its prompt patches "
        "are k x the patch grid).",
    ),
    timing_cache: Path = typer.Option(
        None,
        "--timing-cache",
        help="TensorRT timing cache, read before and written after the builds (faster "
        "rebuilds); one made on another GPU or TensorRT is replaced. Default: "
        "BUNDLE.timing-cache beside the bundle folder.",
        show_default=False,
    ),
    version_compatible: bool = typer.Option(
        False,
        "--version-compatible",
        help="Plans that the lean TensorRT runtime runs (inctrl\\[tensorrt-lean] on edge GPUs), "
        "without the lean runtime inside them.",
    ),
    workspace: int = typer.Option(
        None,
        "--workspace",
        help="TensorRT's workspace limit in MiB. Default: TensorRT's (the GPU's memory).",
        show_default=False,
    ),
    precision: str = typer.Option(
        None,
        "--precision",
        help="fp32, fp16 or int8 (from an encoder with symmetric Q/DQ int8): must be the "
        "bundle's encoder precision (the default); for another, export a bundle in it first.",
        show_default=False,
    ),
    force: bool = typer.Option(
        False, "--force", help="Replace this GPU's and TensorRT's plans of the same kind."
    ),
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check the engines against PyTorch after building."
    ),
    atol: float = Atol,
    json_file: Path = JsonReport,
) -> None:
    r"""Build TensorRT engines for this GPU from a bundle's graphs, into BUNDLE/engines/.

    The plans (encoder and head, named by precision, TensorRT version and compute capability)
    are recorded in the manifest, then run on seeded images (a batch and k other than the
    profile's OPT) and compared with PyTorch; the exit code is 1 if an output differs by more
    than --atol. Needs NVIDIA's TensorRT and a CUDA GPU (pip install "inctrl\[tensorrt]").
    Example:

        inctrl-export tensorrt candle_pcb -c inctrl_k2.pyth --batch 1,8,32 --shots 1,2,8
    """
    from inctrl_export.tensorrt import build_engines

    check_output_paths({"--json": json_file})
    with status("building TensorRT engines (minutes), then checking them"):
        result = build_engines(
            bundle, checkpoint, clip_weights, batch, shots, timing_cache, version_compatible,
            workspace, precision, force, verify, atol, log=log_step,
        )  # fmt: skip
    sizes = ", ".join(
        f"{plan.file} {plan.bytes / 2**20:.1f} MB" for plan in result.build.plans.values()
    )
    say(f"wrote {sizes} into {bundle}; timing cache {result.timing_cache}")
    if result.report is not None:
        print_report(result.report, json_file)
