"""``inctrl-export``: InCTRL checkpoints -> deployable bundles, checked against PyTorch."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from inctrl_runtime.console import (
    DriftDelta,
    Interrupted,
    RegionFpr,
    new_app,
    run_app,
    say,
    status,
    stderr,
)
from inctrl_runtime.drift import DEFAULT_DELTA
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import check_output_paths

EXIT_PARITY_FAILED = 1

app = new_app(
    "inctrl-export",
    (
        "Export InCTRL to a bundle (ONNX encoder + head, text priors, manifest) for the lean "
        "runtime (inctrl-run), build TensorRT engines for a bundle, and check any bundle against "
        "PyTorch."
    ),
)

Checkpoint = typer.Option(
    None,
    "--checkpoint",
    "-c",
    help="InCTRL checkpoint: the authors' .pyth or ours. Default: the embedded DEMO model.",
    show_default=False,
)
SourceCheckpoint = typer.Option(
    None,
    "--checkpoint",
    "-c",
    help="The checkpoint the bundle was exported from (the manifest records its file name and "
    "sha256, which must match). Default, for a demo bundle: the embedded DEMO model.",
    show_default=False,
)
ClipWeights = typer.Option(
    None,
    "--clip-weights",
    help="open_clip weights file, for our checkpoints that hold head weights only.",
    show_default=False,
)
Atol = typer.Option(
    None,
    "--atol",
    help="Pass mark for the max abs difference of the judged outputs. Default: the parity "
    "contract: every head output within 1e-4 for fp32, 5e-3 for fp16; int8's outputs are "
    "reported only (int8 is judged by its AUROC change on labelled images, at most 0.01).",
    show_default=False,
)

JsonReport = typer.Option(
    None,
    "--json",
    help="Write the parity report as JSON to this file (- for stdout).",
    show_default=False,
)


@contextlib.contextmanager
def _left_as_it_was(out: Path) -> Iterator[None]:
    """Say, when a signal ends an export before its bundle is in place, that ``out`` is as it
    was (no bundle, or the old one: the new one is built aside and renamed last)."""
    try:
        yield
    except Interrupted:
        say(f"{out}: left as it was (the new bundle was not complete)")
        raise


@contextlib.contextmanager
def _exit_1_on(refusal: type[Exception]) -> Iterator[None]:
    """A measured refusal (not a user's mistake): its line, and exit code 1."""
    try:
        yield
    except refusal as err:
        say(f"error: {err}")
        raise typer.Exit(EXIT_PARITY_FAILED) from None


def _accuracy_options(
    data: Path | None, max_change: float | None, granularity: str | None, shots: int | None
):
    """``--accuracy-data`` and its options (None without it; its options alone are refused)."""
    from inctrl_export.bundle import AccuracyOptions

    given = {"--max-auroc-change": max_change, "--accuracy-granularity": granularity,
             "--accuracy-shots": shots}  # fmt: skip
    if data is None:
        named = [option for option, value in given.items() if value is not None]
        if named:
            raise InputError(f"{', '.join(named)}: only with --accuracy-data")
        return None
    defaults = AccuracyOptions(data)
    return AccuracyOptions(
        data,
        defaults.max_auroc_change if max_change is None else max_change,
        granularity or defaults.granularity,
        defaults.shots if shots is None else shots,
    )


def _log(message: str) -> None:
    say(f"  {message}")


def _report(report, json_file: Path | None) -> None:
    from inctrl_runtime.files import write_json

    stderr.print(report.table())
    if json_file is not None:
        if str(json_file) == "-":
            sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        else:
            write_json(json_file, report.to_dict())
    if not report.passed:
        judged = [d for d in report.outputs if d.judged]
        worst = max(judged, key=lambda d: d.max_abs) if judged else None
        if worst is None or worst.passes:
            say(
                f"error: parity FAILED: the image AUROC changed by {report.auroc['change']:+.4f}, "
                f"past the mark {report.auroc_mark:g}"
            )
        else:
            say(
                f"error: parity FAILED: {worst.name} differs by {worst.max_abs:.2e} > atol "
                f"{report.atol:g} (see the table; --atol to change the mark)"
            )
        raise typer.Exit(EXIT_PARITY_FAILED)


@app.command()
def onnx(
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to create."),
    checkpoint: Path = Checkpoint,
    category: list[str] = typer.Option(
        None,
        "--category",
        help="A product category to precompute the text prior of; repeat for several. "
        "Default for the demo: its synthetic categories.",
        show_default=False,
    ),
    opset: int = typer.Option(17, help="ONNX opset, 17 or newer."),
    precision: str = typer.Option(
        "fp32",
        help="Encoder precision: fp32; fp16 (for GPUs; LayerNorm, softmax, norms stay fp32); "
        "int8 (static Q/DQ: the transformer blocks' matrix products in int8, symmetric, weights "
        "per channel, activations calibrated on --calibration images; for CPUs and TensorRT).",
    ),
    calibration: Path = typer.Option(
        None,
        "--calibration",
        help="int8: normal images of the bundle's categories to calibrate on: a folder of "
        "images, an MVTec-layout category folder (its train/good images) or a data set folder "
        "of such categories (train/good of each); at most 200 are used, evenly spaced by name. "
        "Required but for the demo, which calibrates on its own synthetic normals.",
        show_default=False,
    ),
    calibration_method: str = typer.Option(
        None,
        "--calibration-method",
        help="int8: how activation ranges are set from the calibration images: percentile "
        "(default: the 99.999th percentile of |x|), minmax or entropy.",
        show_default=False,
    ),
    keep_fp32: list[str] = typer.Option(
        None,
        "--keep-fp32",
        help="int8: leave these transformer block products in fp32: a kind (in_proj, out_proj: "
        "attention's input and output projections; c_fc, c_proj: the MLP's), a block number "
        "counted from 0 (its four), or both as KIND:BLOCK (c_proj:3); repeat for several. The "
        "manifest records which stayed fp32. Default: none.",
        show_default=False,
    ),
    accuracy_data: Path = typer.Option(
        None,
        "--accuracy-data",
        help="int8: choose the block products left in fp32 on this labelled data (MVTec-layout "
        "categories of the bundle, test/good and test/<defect>): each category's image AUROC "
        "with int8 is measured against PyTorch fp32 (k prompts drawn from train/good as inctrl "
        "evaluate draws them, seed 0), and products return to fp32, most sensitive first, "
        "until every category's change is within --max-auroc-change; exit 1 if only an "
        "all-fp32 encoder holds it. For a checkpoint, its train/good images also calibrate "
        "unless --calibration is given. The manifest records the split, the data and every "
        "measured change.",
        show_default=False,
    ),
    max_auroc_change: float = typer.Option(
        None,
        "--max-auroc-change",
        help="--accuracy-data: the most any category's image AUROC may change, either way. "
        "Default: 0.01.",
        show_default=False,
    ),
    accuracy_granularity: str = typer.Option(
        None,
        "--accuracy-granularity",
        help="--accuracy-data: what returns to fp32 at a time: kind (each of the four kinds in "
        "every block; default, the fewest trials), block (each block's four) or product "
        "(each alone: the most trials and the finest split, the one that fits the data "
        "closest: check it on other images with verify).",
        show_default=False,
    ),
    accuracy_shots: int = typer.Option(
        None,
        "--accuracy-shots",
        help="--accuracy-data: prompt images per category (k). Default: 2.",
        show_default=False,
    ),
    clip_weights: Path = ClipWeights,
    verify: bool = typer.Option(
        True, "--verify/--no-verify", help="Check the bundle against PyTorch after writing it."
    ),
    atol: float = Atol,
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
    json_file: Path = JsonReport,
) -> None:
    """Export a checkpoint as a bundle for the lean runtime.

    The bundle holds encoder.onnx, head.onnx, priors.json and manifest.json.

    The bundle is then run through inctrl_runtime on seeded images (other batch size and k than
    the tracing inputs) and compared with PyTorch; the exit code is 1 if a judged output differs
    by more than --atol. Examples:

        inctrl-export onnx -c inctrl_k2.pyth --category candle --category pcb1 --out candle_pcb

        inctrl-export onnx -c inctrl_k2.pyth --category candle --precision int8 \\
            --calibration mvtec/candle --out candle_int8

        inctrl-export onnx --precision int8 --accuracy-data synth --out demo_int8
    """
    from inctrl_export.accuracy_control import Int8BringsNothing
    from inctrl_export.bundle import export_bundle

    check_output_paths({"--json": json_file})
    accuracy = _accuracy_options(
        accuracy_data, max_auroc_change, accuracy_granularity, accuracy_shots
    )
    with (
        status("exporting (tracing, text priors, self-check)"),
        _left_as_it_was(out),
        _exit_1_on(Int8BringsNothing),
    ):
        result = export_bundle(
            out,
            checkpoint,
            category or [],
            clip_weights,
            opset=opset,
            precision=precision,
            verify=verify,
            atol=atol,
            force=force,
            log=_log,
            calibration=calibration,
            calibration_method=calibration_method,
            keep_fp32=keep_fp32 or [],
            accuracy=accuracy,
        )
    sizes = ", ".join(f"{name} {size / 2**20:.1f} MB" for name, size in result.file_bytes.items())
    say(f"wrote {out}: {sizes}")
    if result.report is not None:
        _report(result.report, json_file)


@app.command("verify")
def verify_command(
    bundle: Path = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx)."),
    checkpoint: Path = SourceCheckpoint,
    clip_weights: Path = ClipWeights,
    images: Path = typer.Option(
        None,
        "--images",
        help="A folder of images (--shots prompts drawn with --seed, the rest the queries), or "
        "a category folder in MVTec layout (prompts drawn so from train/good, labelled test "
        "images: AUROC on both sides; int8's change is judged: at most 0.01). Default: the "
        "export's seeded check images (for int8: nothing judged, only reported).",
        show_default=False,
    ),
    category: str = typer.Option(
        None,
        "--category",
        help="Category whose text prior to use. Default: the images folder's name if the bundle "
        "has it, else its first category.",
        show_default=False,
    ),
    shots: int = typer.Option(3, "--shots", "-k", help="Number of prompt images (k)."),
    seed: int = typer.Option(
        0,
        "--seed",
        help="Seed of the prompts' draw from --images: the draw inctrl evaluate makes for the "
        "category with that seed.",
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] (both sides)."),
    atol: float = Atol,
    batch_size: int = typer.Option(16, help="Queries per batch on both sides."),
    json_file: Path = JsonReport,
) -> None:
    """Compare a bundle with PyTorch on images, and say what differs.

    Reports per output the max abs / max rel difference and the tolerance that would pass, the
    rank agreement of scores, AUROC on labelled data and batch invariance.

    Exit code 1 if a judged output differs by more than --atol (fp32, fp16), or an int8
    bundle's image AUROC on labelled --images changes by more than 0.01 either way (without
    labelled images an int8 bundle's drift is reported and nothing is judged). Example:

        inctrl-export verify candle_pcb -c inctrl_k2.pyth --images mvtec/candle -k 2
    """
    from inctrl_export.verify import verify_bundle

    check_output_paths({"--json": json_file})
    with status("scoring with PyTorch and with the bundle"):
        report = verify_bundle(
            bundle, checkpoint, clip_weights, images, category, shots, device, atol, batch_size,
            log=_log, seed=seed,
        )  # fmt: skip
    _report(report, json_file)


@app.command()
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
            workspace, precision, force, verify, atol, log=_log,
        )  # fmt: skip
    sizes = ", ".join(
        f"{plan.file} {plan.bytes / 2**20:.1f} MB" for plan in result.build.plans.values()
    )
    say(f"wrote {sizes} into {bundle}; timing cache {result.timing_cache}")
    if result.report is not None:
        _report(result.report, json_file)


@app.command()
def triton(
    bundle: Path = typer.Argument(..., help="Bundle folder (made by inctrl-export onnx)."),
    out: Path = typer.Option(..., "--out", "-o", help="Model repository folder to create."),
    backend: str = typer.Option(
        "onnxruntime",
        "--backend",
        help="What runs the encoder: onnxruntime (platform onnxruntime_onnx, the bundle's "
        "encoder.onnx, KIND_AUTO: the server's GPUs if it has any, else the CPU), tensorrt "
        "(tensorrt_plan, the encoder plan inctrl-export tensorrt recorded, KIND_GPU) or python "
        "(the runtime's engine on the CPU, as inctrl-run serve).",
    ),
    max_batch: int = typer.Option(
        32, "--max-batch", help="max_batch_size of every model; a TensorRT plan must take it."
    ),
    instances: int = typer.Option(
        1,
        "--instances",
        help="Instances of the encoder (on every GPU for tensorrt) and of the entry model.",
    ),
    category: list[str] = typer.Option(
        None,
        "--category",
        help="A category the entry loads at start; repeat for several. Default: every registered "
        "one (others are loaded when first asked for).",
        show_default=False,
    ),
    fpr: float = typer.Option(0.01, "--fpr", help="False-positive rate of the decisions."),
    region_fpr: RegionFpr = None,
    drift_delta: DriftDelta = DEFAULT_DELTA,
    engine: str = typer.Option(
        None,
        "--engine",
        help="tensorrt: the build to serve, e.g. fp16.trt11.4.sm89 (inctrl-run info lists them). "
        "Default: the bundle's one build of its encoder precision.",
        show_default=False,
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out folder."),
) -> None:
    r"""Write an NVIDIA Triton Inference Server model repository for a bundle.

    The entry model 'inctrl' takes an image file's bytes and a category name and returns what
    inctrl-run score --json records: the scores, the patch map, the decisions and the defect
    regions (as JSON text); one encoder serves every category, with dynamic batching, and a
    category registered with tiles is cut into them. Every calibrated category's drift monitor
    is published on the metrics endpoint. The
    bundle's manifest and checksums are checked first, and a copy of the bundle travels inside
    the repository. Examples:

        inctrl-export triton candle_pcb --out repo --max-batch 32

        inctrl-export tensorrt candle_pcb --batch 1,8,32 && inctrl-export triton candle_pcb \
            --out repo --backend tensorrt --instances 2

    On a GPU machine, serve it with NVIDIA's container (a release whose TensorRT built the
    plan); its python models (the entry) need the runtime in the container's Python:
    pip install "inctrl\[cpu]" "numpy<2" (onnxruntime, no torch; Triton's python backend needs
    numpy 1.x):

        docker run --gpus all -p8000:8000 -p8001:8001 -p8002:8002 -v $PWD/repo:/models \
            nvcr.io/nvidia/tritonserver:<yy.mm>-py3 sh -c 'pip install "inctrl\[cpu]" \
            "numpy<2" && tritonserver --model-repository /models'
    """
    from inctrl_export.triton import export_triton

    result = export_triton(
        bundle, out, backend, max_batch, instances, category or None, fpr, region_fpr, engine,
        force, drift_delta,
    )  # fmt: skip
    for line in result.summary():
        say(line)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-export``."""
    run_app(app, "inctrl-export", argv)
