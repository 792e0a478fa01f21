"""``inctrl-bench``: latency, throughput and efficiency of every InCTRL backend on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from inctrl_runtime.console import new_app, run_app, say, status
from inctrl_runtime.files import check_output_paths

app = new_app(
    "inctrl-bench",
    "Benchmark InCTRL's backends (the authors' way, PyTorch, onnxruntime, TensorRT).",
    no_args_is_help=False,
)


@app.command()
def bench(
    bundle: Path = typer.Argument(
        None,
        help="A bundle (inctrl-export onnx) for the onnxruntime backends, and with its TensorRT "
        "plans (inctrl-export tensorrt) for the tensorrt ones. Default: export the model benched "
        "to a temporary bundle (and build its plans where TensorRT's builder runs).",
    ),
    checkpoint: Path = typer.Option(
        None,
        "--checkpoint",
        "-c",
        help="Checkpoint for the torch backends (and the bundle when none is given; with a "
        "BUNDLE, checked against its source's sha256). Default: the embedded DEMO model (with "
        "a BUNDLE: only for a demo bundle).",
    ),
    preset: str = typer.Option(
        None,
        "--preset",
        help="Bench a preset's full architecture with seeded random weights, e.g. "
        "ViT-B-16-plus-240 (a 0.8 GB temporary checkpoint).",
    ),
    backend: list[str] = typer.Option(
        None,
        "--backend",
        "-b",
        help="Backend by name or prefix (onnxruntime: all its variants; tensorrt: native plans; "
        "onnxruntime-tensorrt: onnxruntime's TensorRT provider; triton: the bundle served by "
        "tritonserver, measured from a client at concurrency 1, 4, 16, only when named); repeat "
        "for several. Default: all but triton.",
    ),
    batch: str = typer.Option("1,8,32", "--batch", help="Batch sizes for throughput."),
    shots: str = typer.Option(
        "2,4,8", "--shots", help="Prompt counts k to register; queries use the smallest."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    repeats: int = typer.Option(
        None,
        "--repeats",
        help="Timed runs per measurement after a warm-up. Default: at least 2 and 1 s, at most 50.",
    ),
    eval_data: Path = typer.Option(
        None,
        "--eval",
        help="Labelled MVTec-layout data: one category folder (train/good, test/good, "
        "test/<defect>) or a folder of them (all are used). Every row that runs also scores "
        "each category's test images, its first k (smallest --shots) train/good images the "
        "prompts: image AUROC per category and mean, and the final score's drift against "
        "torch-fp32 on the same images (run on them even if not benched, where torch is). Where "
        "test images have masks (ground_truth/<defect>/<name>_mask.png): pixel AUROC, AUPRO to "
        "a false-positive rate of 0.3, and at region thresholds for 0.05 and 0.1 (the map "
        "maxima of the other train/good images) the share of defect regions touched and of "
        "test normals given a region. Its train/good images also calibrate the bench's int8 "
        "export of a real checkpoint.",
    ),
    tiles: str = typer.Option(
        None,
        "--tiles",
        help="Time frames scored tile by tile (ROWSxCOLUMNS, as inctrl-run register --tiles): "
        "1024 x 768 frames, their tiles encoded in one batch, the bank the k prompts' tiles. "
        "Rows count frames, not tiles.",
        show_default=False,
    ),
    keep_fp32: list[str] = typer.Option(
        None,
        "--keep-fp32",
        help="The int8 rows' split: the bench's own int8 export leaves these transformer block "
        "products in fp32, as inctrl-export onnx --keep-fp32 (a kind, a block number, or "
        "KIND:BLOCK); repeat for several. The int8 rows name their split. Default: none (a "
        "given int8 BUNDLE keeps its own, e.g. one chosen by --accuracy-data).",
        show_default=False,
    ),
    json_file: Path = typer.Option(None, "--json", help="Write the full report as JSON here."),
    plot_file: Path = typer.Option(
        None,
        "--plot",
        help="Write a PNG: latency per query vs batch, speed-ups (with --eval: AUROC).",
    ),
) -> None:
    """Measure latency per query (p50/p90/p99, stages), throughput per batch size, prompt
    registration, the text prior's one-time cost, memory, and achieved GFLOP/s against this
    machine's measured fp32 peak, for every backend (TensorRT plans also: build time, plan size,
    GPU time per query from CUDA events; with --eval: image AUROC, pixel metrics where masks
    exist, and score drift against torch-fp32); unavailable ones are listed with the reason.
    Examples:

        inctrl-bench --json bench.json --plot bench.png

        inctrl-bench --eval mvtec/ --backend torch-fp32 --backend onnxruntime-cpu

        inctrl-bench bundle/ --backend onnxruntime --batch 1,16

        inctrl-bench --preset ViT-B-16-plus-240 --backend torch-fp32 --backend onnxruntime

        inctrl-bench --device cuda --backend tensorrt --backend onnxruntime-tensorrt

        inctrl-bench --backend triton --backend onnxruntime-cpu-fp32

        inctrl-bench --tiles 3x3 --backend torch-fp32 --backend onnxruntime-cpu-fp32
    """
    from inctrl_bench.machine import Progress
    from inctrl_bench.report import print_report
    from inctrl_bench.suite import BenchSettings, parse_sizes, run_bench

    check_output_paths({"--json": json_file, "--plot": plot_file})
    settings = BenchSettings(
        bundle=bundle,
        checkpoint=checkpoint,
        preset=preset,
        backends=tuple(backend or ()),
        batches=parse_sizes(batch, "--batch"),
        shots=parse_sizes(shots, "--shots"),
        device=device,
        repeats=repeats,
        eval_data=eval_data,
        tiles=tiles,
        keep_fp32=tuple(keep_fp32 or ()),
    )
    with status("starting") as spinner:
        progress = Progress(spinner.update, say) if spinner else Progress(done=say)
        report = run_bench(settings, json_file, plot_file, progress)
    print_report(report)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``inctrl-bench``."""
    run_app(app, "inctrl-bench", argv)
