"""``inctrl-export triton``: a bundle -> an NVIDIA Triton Inference Server model repository."""

from __future__ import annotations

from pathlib import Path

import typer

from inctrl_runtime.console import DriftDelta, RegionFpr, say
from inctrl_runtime.drift import DEFAULT_DELTA


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
