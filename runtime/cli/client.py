"""``inctrl-run client``: score images on a running server of a bundle (``inctrl-run serve``,
or an exported repository) and print what ``inctrl-run score`` prints; with ``--check``, a
liveness check that really infers."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import typer

from inctrl_runtime.cli.common import CategoryOption, QueryPaths, app, images_of
from inctrl_runtime.console import (
    JsonFlag,
    JsonlFlag,
    output_format,
    require_category,
    require_files,
    say,
)
from inctrl_runtime.errors import InputError

# Requests per printed batch, per thread: enough to keep every thread busy between batches.
REQUESTS_PER_THREAD = 8
# The image --check sends: seeded noise of a camera frame's shape (any image gets an answer).
CHECK_SEED, CHECK_SIZE = 0, (480, 640, 3)


def run_check(url: str, category: str | None, image: Path | None = None) -> str:
    """Send one image (``image``, else generated noise of a camera frame's shape) through the
    server's entry model and return a line saying it answered; an answer that is missing,
    incomplete or not finite is a one-line error (a server that says it is ready but cannot
    infer fails this). A tiled category takes frames of its size only: give it one."""
    import math
    import time

    import numpy as np

    from inctrl_runtime.results import SCALAR_FIELDS
    from inctrl_runtime.triton.client import Request, TritonClient

    require_category(category)
    if image is not None:
        require_files([image], "image")
    probe = image if image is not None else np.random.default_rng(CHECK_SEED).integers(
        0, 256, CHECK_SIZE, dtype=np.uint8)  # fmt: skip
    client = TritonClient(url)
    began = time.perf_counter()
    try:
        # not a part of the category's drift monitor: a probe's image is no product
        (answer,) = client.answers([Request.of(category, probe, watched=False)])
    except InputError as err:
        if image is not None:
            raise
        raise InputError(
            f"{err}; the generated probe image was refused: give --check an image of the "
            "category as its one QUERY (a tiled category takes frames of its size only)"
        ) from None
    record = answer.record
    seconds = time.perf_counter() - began
    patch_map = record["patch_residual_map"]
    values = [*(record[name] for name in SCALAR_FIELDS), *patch_map]
    if not patch_map or not all(math.isfinite(value) for value in values):
        raise InputError(f"{url}: answered {category!r} with scores that are not finite numbers")
    return f"ok: {url} answered {category!r} in {1000 * seconds:.0f} ms"


def run_client(
    url: str,
    category: str | None,
    queries: Sequence[Path],
    concurrency: int = 1,
    report: Path | None = None,
) -> Iterator[list[dict]]:
    """Score queries (image files, or folders: their images, sorted by name) on the server at
    ``url``, ``concurrency`` requests at once: the records of each batch as it is answered, as
    ``inctrl-run score --json`` writes them. Everything the client can check is checked before
    the first request. ``report`` names an HTML inspection report of the answers, written
    once the last batch is out."""
    from inctrl_runtime.report import CARD_SIZE, ReportWriter, check_report_path
    from inctrl_runtime.triton.client import Request, TritonClient

    require_category(category)
    if report is not None:
        check_report_path(report)
    client = TritonClient(url)
    if concurrency < 1:
        raise InputError(f"--concurrency {concurrency}: give at least 1")
    if not queries:
        raise InputError("no query images given: list the images or folders to score after URL")
    images = images_of(queries, "query image")
    client.require_ready()
    step = concurrency * REQUESTS_PER_THREAD

    def batches() -> Iterator[list[dict]]:
        for start in range(0, len(images), step):
            requests = [Request.of(category, image) for image in images[start : start + step]]
            yield [answer.record for answer in client.answers(requests, concurrency)]

    if report is None:
        return batches()
    from inctrl_runtime.cli.report import client_header, reporting_records

    writer = ReportWriter(report, client_header(url, category))
    return reporting_records(batches(), writer, client.image_size(), CARD_SIZE)


@app.command()
def client(
    url: str = typer.Argument(
        ..., help="The server: http://HOST:PORT (HTTP) or grpc://HOST:PORT (gRPC)."
    ),
    queries: QueryPaths = None,
    category: str = CategoryOption,
    concurrency: int = typer.Option(
        1, "--concurrency", "-n", help="Requests in flight at once (one image each)."
    ),
    as_json: JsonFlag = False,
    as_jsonl: JsonlFlag = False,
    report: Path = typer.Option(
        None,
        "--report",
        help="Write an HTML inspection report of the answers here (self-contained; heatmaps "
        "drawn on the local image files).",
        show_default=False,
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="A liveness probe: send one image, the one QUERY given (a tiled category takes "
        "frames of its size only) or else a generated one; exit 0 only on a complete, finite "
        "answer.",
    ),
) -> None:
    """Score images on a running Triton server of a bundle.

    Scores QUERIES (images, or folders of images) of a --category on a server of a bundle
    (inctrl-run serve BUNDLE): the same table or JSON as `inctrl-run score`.

    Examples:

        inctrl-run client http://127.0.0.1:8000 --category candle --json q1.png q2.png

        inctrl-run client grpc://127.0.0.1:8001 --category candle --concurrency 8 images/

        inctrl-run client http://127.0.0.1:8000 --category candle --report report.html images/

        inctrl-run client http://127.0.0.1:8000 --category candle --check

        inctrl-run client http://127.0.0.1:8000 --category pcb_frames --check frame.png
    """
    from inctrl_runtime.output import print_streamed

    if check:
        if len(queries or []) > 1:
            raise InputError("--check sends one image: give at most one QUERY with it")
        say(run_check(url, category, queries[0] if queries else None))
        return
    output = output_format(as_json, as_jsonl)
    batches = run_client(url, category, queries or [], concurrency=concurrency, report=report)
    print_streamed(batches, output)
    if report is not None:
        say(f"report: {report}")
