"""``inctrl_runtime.triton.client`` and ``inctrl-run client``: addresses, the runtime's records
from the entry point's outputs (NaN decisions as None), the bytes sent for each kind of image,
and the region fields read by their codec, one-line errors without a server; then against the
REAL ``tritonserver`` (127.0.0.1, free
ports): a server without the entry point is not ready, and on the session's ``triton_server``
records over HTTP and gRPC equal ``Detector.score``'s, the statistics read the same over both,
the command line prints what ``inctrl-run score`` prints, a refused request is named, and the
load test (8 client threads, 200 requests of both categories: none lost or swapped, the encoder
batching them) writes its figures to stdout and LOAD_FIGURES.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.cli import main as inctrl_run
from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import describe, load_image, preprocess
from inctrl_runtime.regions import Framing, RegionRule
from inctrl_runtime.results import SCALAR_FIELDS, Result
from inctrl_runtime.tiling import TileLayout, Tiling
from inctrl_runtime.triton.client import (
    DEFAULT_PORTS,
    Request,
    TritonClient,
    encoded_image,
    parse_url,
)
from inctrl_runtime.triton.names import ENCODER, OUTPUTS
from inctrl_runtime.triton.server import TritonServer, free_port
from inctrl_runtime.triton.wire import record_of, where_arrays

from helpers import (
    BUNDLE_CATEGORIES,
    CATEGORY,
    VARIED_SIZES,
    assert_same_records,
    png_bytes,
    random_images,
    require_serving,
    run_main,
)

THREADS, PER_THREAD = 8, 25
OTHER = BUNDLE_CATEGORIES[1]  # metal_nut: registered, not calibrated


# ------------------------------------------------------------------------- no server needed
@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "protocol", "address"),
    [
        ("http://127.0.0.1:8123", "http", "127.0.0.1:8123"),
        ("grpc://localhost:9001/", "grpc", "localhost:9001"),
        ("HTTP://triton.local", "http", f"triton.local:{DEFAULT_PORTS['http']}"),
        ("grpc://10.0.0.2", "grpc", f"10.0.0.2:{DEFAULT_PORTS['grpc']}"),
    ],
)
def test_the_scheme_chooses_the_protocol(url: str, protocol: str, address: str) -> None:
    assert parse_url(url) == (protocol, address)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("url", "phrase"),
    [
        ("127.0.0.1:8000", "give http://HOST:PORT"),
        ("https://host:8000", "give http://HOST:PORT"),
        ("http://:8000", "give http://HOST:PORT"),
        ("http://host:port", "give http://HOST:PORT"),
        ("http://host:8000/v2/models", "without a path or query"),
        ("grpc://host:8001?x=1", "without a path or query"),
    ],
)
def test_other_addresses_are_refused_in_one_line(url: str, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase):
        TritonClient(url)


# A frame twice as wide as high: the model's 240 x 240 view sees half of it (exactly, in fp32).
FRAME, SIZE = (480, 240), 240
MAXIMA = np.linspace(0, 1, 19, dtype=np.float32)  # a calibration's sorted map maxima
RULES = {  # region rules whose thresholds fp32 holds exactly: the patch map below crosses 0.5
    "regions": RegionRule(MAXIMA, 0.1, 0.5),
    "none above": RegionRule(MAXIMA, 0.1, 1.5),
    "no rule": None,
}


def _outputs(
    p_value: float,
    threshold: float,
    anomalous: bool,
    rule: RegionRule | None,
    framing: Framing | TileLayout,
    decisive: int | None = None,
) -> dict[str, np.ndarray]:
    """The entry point's outputs for one image, as the server sends them (batch axis first):
    a frame scored whole, or a tiled one (its ``decisive`` tile)."""
    scalars = {"score": 0.75, "holistic_score": 0.5, "image_residual_score": 0.25}
    scalars |= {"text_score": 0.125, "max_patch_residual": 1.5}
    scalars |= {"p_value": p_value, "threshold": threshold}
    outputs = {name: np.array([[value]], np.float32) for name, value in scalars.items()}
    outputs["anomalous"] = np.array([[anomalous]])
    tiles = len(framing.boxes) if isinstance(framing, TileLayout) else 1
    outputs["patch_residual_map"] = np.tile(np.arange(9, dtype=np.float32) / 8, (1, tiles))
    tile = None if decisive is None else [decisive]
    where = where_arrays(rule, outputs["patch_residual_map"], [framing], tile)
    outputs |= {name: a if a.ndim == 2 else a.reshape(-1, 1) for name, a in where.items()}
    assert set(outputs) == set(OUTPUTS)
    return outputs


@pytest.mark.unit
@pytest.mark.parametrize(
    ("sent", "decided", "rule"),
    [
        ((0.25, 0.5, True), {"p_value": 0.25, "threshold": 0.5, "anomalous": True}, "regions"),
        ((0.75, 0.5, False), {"p_value": 0.75, "threshold": 0.5, "anomalous": False}, "none above"),
        ((0.25, math.nan, False), {"p_value": 0.25}, "regions"),  # too few normals for the fpr
        ((0.25, math.nan, False), {"p_value": 0.25}, "no rule"),  # ... and for the region fpr
        ((math.nan, math.nan, False), {}, "no rule"),  # uncalibrated
    ],
)
@pytest.mark.parametrize("tiled", [False, True])
def test_records_are_the_runtimes_with_nan_decisions_as_none(sent, decided, rule, tiled) -> None:
    framing = Tiling(1, 3).layout(*FRAME, SIZE) if tiled else Framing(*FRAME, SIZE)
    decisive = 2 if tiled else None
    outputs = _outputs(*sent, RULES[rule], framing, decisive)
    patch_map = outputs["patch_residual_map"][0]
    found = None if RULES[rule] is None else tuple(framing.regions(RULES[rule], patch_map))
    result = Result(
        image="q.png",
        **{name: float(outputs[name][0, 0]) for name in SCALAR_FIELDS},
        patch_residual_map=patch_map,
        framing=framing,
        **decided,
        region_threshold=None if RULES[rule] is None else RULES[rule].threshold,
        regions=found,
        decisive_tile=decisive,
    )
    if found is not None:  # the codec carries regions, and an empty list
        assert bool(found) == (rule == "regions")
    record = record_of("q.png", outputs.__getitem__)
    assert record == result.record()
    assert list(record) == list(result.record())  # the same keys in the same order
    assert json.dumps(record) == json.dumps(result.record())
    assert record["inspected_fraction"] == (1.0 if tiled else 0.5)
    assert record["frame_size"] == list(FRAME)
    assert (record["tiling"] is None) == (record["decisive_tile"] is None) == (not tiled)


@pytest.mark.unit
def test_the_bytes_sent_are_the_file_or_the_same_pixels(tmp_path: Path) -> None:
    rgb, gray16 = random_images(1, seed=3)[0], np.arange(60000, dtype=np.uint16).reshape(200, 300)
    file = tmp_path / "q.png"
    file.write_bytes(png_bytes(rgb))
    assert encoded_image(file) == file.read_bytes() == encoded_image(str(file))
    np.save(tmp_path / "q.npy", rgb)
    rgba = Image.fromarray(rgb).convert("RGBA")
    for source in (rgb, gray16, rgba, tmp_path / "q.npy"):
        sent = load_image(encoded_image(source))
        want = load_image(source)
        assert sent.mode == want.mode and sent.size == want.size
        assert np.array_equal(preprocess(sent), preprocess(want))
    request = Request.of(CATEGORY, rgb)
    assert request.image == "<array uint8 (260, 300, 3)>" and request.category == CATEGORY
    with pytest.raises(InputError, match="no such query image file"):
        encoded_image(tmp_path / "missing.png")
    with pytest.raises(InputError, match="unsupported array"):
        encoded_image(np.zeros((8, 8, 2), np.float32))


@pytest.mark.unit
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_no_server_is_one_line_naming_the_address(scheme: str) -> None:
    client = TritonClient(f"{scheme}://127.0.0.1:{free_port()}", timeout_s=10)
    assert client.ready() is False
    for call in (client.statistics, lambda: client.records(CATEGORY, random_images(1))):
        with pytest.raises(InputError, match="no answer from a Triton server") as refused:
            call()
        assert client.url in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(InputError, match="--concurrency 0: give at least 1"):
        client.records(CATEGORY, random_images(1), concurrency=0)
    assert client.records(CATEGORY, []) == []  # nothing to send: no connection needed


@pytest.mark.cli
@pytest.mark.parametrize(
    ("args", "phrase"),
    [
        (["ftp://host:1", "--category", CATEGORY, "q.png"], "not a Triton server's address"),
        (["http://127.0.0.1:1", "q.png"], "no --category given"),
        (["http://127.0.0.1:1", "--category", CATEGORY], "no query images given"),
        (["http://127.0.0.1:1", "--category", CATEGORY, "missing.png"], "no such query image"),
        (["http://127.0.0.1:1", "--category", CATEGORY, "-n", "0", "q.png"], "--concurrency 0"),
        (["http://127.0.0.1:1", "--category", CATEGORY, "--json", "--jsonl", "q.png"], "exclude"),
        (
            ["http://127.0.0.1:1", "--category", CATEGORY, "--check", "q.png", "q.png"],
            "--check sends one image: give at most one QUERY",
        ),
        (
            ["http://127.0.0.1:1", "--category", CATEGORY, "--check", "missing.png"],
            "missing.png: no such image file",
        ),
    ],
)
def test_client_command_refusals_are_one_line(
    args: list[str], phrase: str, tmp_path, monkeypatch
) -> None:
    (tmp_path / "q.png").write_bytes(png_bytes(random_images(1)[0]))
    monkeypatch.chdir(tmp_path)
    run_main(inctrl_run, "client", *args).assert_refused(phrase)


@pytest.mark.cli
def test_client_command_without_a_server_says_so(tmp_path: Path) -> None:
    (tmp_path / "q.png").write_bytes(png_bytes(random_images(1)[0]))
    url = f"grpc://127.0.0.1:{free_port()}"
    outcome = run_main(inctrl_run, "client", url, "--category", CATEGORY, tmp_path / "q.png")
    outcome.assert_refused(url, "no answer from a Triton server", "inctrl-run serve")


# ------------------------------------------------------------------- the real tritonserver
def query_files(folder: Path, count: int, seed: int) -> list[Path]:
    """Seeded query images of varied sizes as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = [folder / f"q{i:02d}.png" for i in range(count)]
    for file, image in zip(files, random_images(count, seed=seed, size=VARIED_SIZES), strict=True):
        file.write_bytes(png_bytes(image))
    return files


@pytest.mark.parity
@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_records_equal_the_runtimes_over_both_protocols(triton_server, tmp_path, scheme) -> None:
    from inctrl_runtime.detector import Detector

    client = TritonClient(triton_server.http_url if scheme == "http" else triton_server.grpc_url)
    assert client.ready()
    files = query_files(tmp_path, 3, seed=60)
    array = random_images(1, seed=61, size=(300, 260))[0]
    detector = Detector.open(triton_server.bundle)
    queries = [*files, array]
    for category in BUNDLE_CATEGORIES:
        want = [r.record() for r in detector.results(category, queries, fpr=triton_server.fpr)]
        got = client.records(category, queries, concurrency=2)
        assert_same_records(got, want)
        calibrated = category == CATEGORY  # candle: decisions at the server's rate
        assert all((r["p_value"] is not None) == calibrated for r in got), category
        assert all((r["anomalous"] is not None) == calibrated for r in got), category
    assert client.records(OTHER, files[0]) == client.records(OTHER, [files[0]])
    detector.close()
    # the statistics API read the same over both protocols (gRPC's counts come as strings)
    stats = client.statistics()
    assert stats == TritonClient(triton_server.http_url).statistics()
    encoder = stats[ENCODER]
    assert encoder.execution_count == sum(encoder.batch_sizes.values()) > 0
    assert encoder.inference_count == sum(size * n for size, n in encoder.batch_sizes.items())


@pytest.mark.parity
def test_a_refused_request_is_named_and_the_next_is_answered(triton_server, tmp_path) -> None:
    client = TritonClient(triton_server.grpc_url)
    files = query_files(tmp_path, 2, seed=62)
    (tmp_path / "bad.png").write_bytes(b"GIF89a not really")
    with pytest.raises(InputError) as refused:
        client.records("nope", files)
    message = str(refused.value)
    assert message.startswith(f"{files[0]}: the server at {client.url} refused it")
    assert "category 'nope' has no text prior" in message and "\n" not in message
    with pytest.raises(InputError, match="bad.png: .*not a readable image"):
        client.records(CATEGORY, [files[0], tmp_path / "bad.png", files[1]], concurrency=3)
    assert len(client.records(CATEGORY, files, concurrency=2)) == 2


ECHO_CONFIG = """name: "echo"
backend: "python"
max_batch_size: 4
input [ { name: "x" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 1 ] } ]
"""
ECHO_MODEL = """import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        return [
            pb_utils.InferenceResponse([pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(
                r, "x").as_numpy())]) for r in requests
        ]
"""


@pytest.mark.parity
def test_a_server_without_the_entry_point_is_not_ready(tmp_path: Path) -> None:
    require_serving()
    (tmp_path / "repository" / "echo" / "1").mkdir(parents=True)
    (tmp_path / "repository" / "echo" / "config.pbtxt").write_text(ECHO_CONFIG)
    (tmp_path / "repository" / "echo" / "1" / "model.py").write_text(ECHO_MODEL)
    with TritonServer(tmp_path / "repository") as server:
        for url in (server.http_url, server.grpc_url):
            client = TritonClient(url)
            assert client.ready() is False
            with pytest.raises(InputError, match="the server runs but its model 'inctrl' is not"):
                client.records(CATEGORY, random_images(1))
            assert set(client.statistics()) == {"echo"}


@pytest.mark.cli
def test_client_command_prints_what_score_prints(triton_server, tmp_path) -> None:
    files = query_files(tmp_path / "queries", 3, seed=63)
    fpr = str(triton_server.fpr)
    score = run_main(
        inctrl_run, "score", triton_server.bundle, "--category", CATEGORY, "--fpr", fpr, "--json",
        tmp_path / "queries",
    )  # fmt: skip
    assert score.code == 0, score.err
    want = json.loads(score.out)
    url = triton_server.http_url
    served = run_main(inctrl_run, "client", url, "--category", CATEGORY, "--json", *files)
    assert served.code == 0, served.err
    assert_same_records(json.loads(served.out), want)
    lines = run_main(
        inctrl_run, "client", triton_server.grpc_url, "--category", CATEGORY, "--jsonl", "-n", "2",
        tmp_path / "queries",
    )  # fmt: skip
    assert lines.code == 0, lines.err
    assert_same_records([json.loads(line) for line in lines.out.splitlines()], want)
    table = run_main(inctrl_run, "client", url, "--category", CATEGORY, files[0])
    assert table.code == 0 and "InCTRL anomaly scores" in table.out and "p-value" in table.out
    refused = run_main(inctrl_run, "client", url, "--category", "nope", files[0])
    refused.assert_refused(str(files[0]), "category 'nope' has no text prior")
    # --report: the answers' page, a card per answer with its heatmap, the answers' threshold,
    # and a note of what the server does not tell
    page = tmp_path / "served.html"
    reported = run_main(inctrl_run, "client", url, "--category", CATEGORY, "--json",
                        "--report", page, *files)  # fmt: skip
    assert reported.code == 0, reported.err
    text = page.read_text()
    assert text.count('class="card"') == 3 and text.count("data:image/jpeg;base64,") == 3
    assert f"{want[0]['threshold']:.4f}" in text and "the server does not tell" in text
    assert text.count('data-flagged="true"') == sum(r["anomalous"] for r in want)


@pytest.mark.parity
@pytest.mark.slow
def test_load_none_lost_or_swapped_and_the_encoder_batches(triton_server, tmp_path) -> None:
    from inctrl_bench.triton_backend import batch_sizes_text, served_run
    from inctrl_runtime.detector import Detector

    # 10 images x 2 categories: 20 different answers, each request's known beforehand
    images = random_images(10, seed=70, size=VARIED_SIZES)
    detector = Detector.open(triton_server.bundle)
    want = {
        (category, index): record
        for category in BUNDLE_CATEGORIES
        for index, record in enumerate(
            r.record() for r in detector.results(category, images, fpr=triton_server.fpr)
        )
    }
    detector.close()
    maps = np.array([record["patch_residual_map"] for record in want.values()])
    apart = np.abs(maps[:, None] - maps[None]).max(axis=2) + np.eye(len(maps))
    assert apart.min() > 1e-3  # a swapped answer cannot pass for its own (1e-5)
    count = THREADS * PER_THREAD
    jobs = [(BUNDLE_CATEGORIES[(i // 3) % 2], (7 * i) % len(images)) for i in range(count)]
    sent = [(describe(image), encoded_image(image)) for image in images]
    requests = [Request(category, *sent[index]) for category, index in jobs]
    client = TritonClient(triton_server.http_url)
    run, answers = served_run(client, requests, THREADS)

    assert len(answers) == count and None not in answers  # every request answered
    for job, answer in zip(jobs, answers, strict=True):  # each its own image's, none swapped
        assert_same_records([answer.record], [want[job]])
    encoder = run.executed[ENCODER]
    assert sum(size * times for size, times in encoder.items()) == count  # each image once
    assert max(encoder) > 1, encoder  # concurrent requests merged by the dynamic batcher
    figures = (
        f"load test (tests/test_triton_client.py, tiny fp32 bundle, python backend on the CPU, "
        f"HTTP): {run.requests} requests of {len(BUNDLE_CATEGORIES)} categories from "
        f"{run.concurrency} client threads, lost 0, swapped 0; client-observed latency p50 "
        f"{run.latency.p50_ms:.1f} ms, p99 {run.latency.p99_ms:.1f} ms; "
        f"{run.images_per_s:.1f} images/s; encoder executed batch sizes (size x times) "
        f"{batch_sizes_text(encoder)}"
    )
    print(figures)  # pytest -s shows them
