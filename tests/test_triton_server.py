"""The python-backend repository served by the REAL ``tritonserver`` of the serve extra, on
127.0.0.1 and free ports, asked with ``tritonclient`` over HTTP and gRPC: its scores,
decisions and regions are ``inctrl-run score``'s, requests of both categories batch together,
bad requests fail alone, a category registered while it runs is served, its models check the
bundle when they load, ``inctrl-run serve`` leaves nothing behind after SIGTERM, and a server
killed before its stubs clean up leaves no shared memory.

Every server is stopped by the context manager that starts it (the session's by the
``triton_server`` fixture), also when a test fails; each call has a timeout.
"""

from __future__ import annotations

import glob
import json
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from inctrl_runtime.cli import main as inctrl_run
from inctrl_runtime.detector import Detector
from inctrl_runtime.drift import MonitorState
from inctrl_runtime.errors import InputError
from inctrl_runtime.tiling import Tiling
from inctrl_runtime.triton.client import TritonClient
from inctrl_runtime.triton.names import CATEGORY as CATEGORY_INPUT
from inctrl_runtime.triton.names import ENCODER, ENTRY, IMAGE, OUTPUTS
from inctrl_runtime.triton.repository import write_repository
from inctrl_runtime.triton.server import PYTHON_ENVS, SHARED_MEMORY, TritonServer
from inctrl_runtime.triton.wire import record_of

from helpers import (
    BUNDLE_CATEGORIES,
    CATEGORY,
    TRITON_FPR,
    VARIED_SIZES,
    assert_same_records,
    png_bytes,
    random_images,
    register_served,
    require_serving,
    run_main,
    serve_bundle,
)

pytestmark = pytest.mark.parity
TIMEOUT_S = 60.0
OTHER = BUNDLE_CATEGORIES[1]  # metal_nut: registered, not calibrated
# A region rate at which about half of good parts get a region: queries that have some.
REGION_FPR = 0.5


def infer(url: str, images: list[bytes], categories: list[str]) -> dict[str, np.ndarray]:
    """One request to the entry point (a row per image) over ``url``'s protocol."""
    import tritonclient.grpc
    import tritonclient.http

    scheme, address = url.split("://")
    module = tritonclient.http if scheme == "http" else tritonclient.grpc
    rows = {IMAGE: images, CATEGORY_INPUT: [c.encode() for c in categories]}
    inputs = []
    for name, values in rows.items():
        tensor = module.InferInput(name, [len(values), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(values, dtype=object).reshape(-1, 1))
        inputs.append(tensor)
    if scheme == "http":
        client = module.InferenceServerClient(address, network_timeout=TIMEOUT_S)
        result = client.infer(ENTRY, inputs)
    else:
        client = module.InferenceServerClient(address)
        result = client.infer(ENTRY, inputs, client_timeout=TIMEOUT_S)
    client.close()
    return {name: result.as_numpy(name) for name in OUTPUTS}


def refusal(url: str, image: bytes, category: str) -> str:
    """The error message of a request the server must refuse."""
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as refused:
        infer(url, [image], [category])
    return str(refused.value)


def cli_records(
    bundle: Path, category: str, files: list[Path], fpr: float, *options: object
) -> list[dict]:
    """``inctrl-run score --json`` on the images, with ``options`` (the real command, in this
    process)."""
    outcome = run_main(
        inctrl_run, "score", bundle, "--category", category, *files, "--json", "--fpr", fpr,
        *options,
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    return json.loads(outcome.out)


def assert_answer_is(answer: dict[str, np.ndarray], record: dict, row: int = 0) -> None:
    """Row ``row`` of an answer, read as the client reads it (``record_of``: NaN decisions
    and region threshold, false anomalous and JSON null regions are None), is a record of
    ``inctrl-run score --json``: every key, numbers within 1e-5 (``assert_same_records``)."""
    served = record_of(record["image"], lambda name: answer[name][row : row + 1])
    assert_same_records([served], [record])


def query_files(folder: Path, count: int = 3, seed: int = 40) -> list[Path]:
    """Seeded query images of varied sizes, written as PNG files."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for index, image in enumerate(random_images(count, seed=seed, size=VARIED_SIZES)):
        files.append(folder / f"q{index}.png")
        files[-1].write_bytes(png_bytes(image))
    return files


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_and_decisions_are_inctrl_run_scores(triton_server, tmp_path, protocol):
    url = triton_server.http_url if protocol == "http" else triton_server.grpc_url
    files = query_files(tmp_path)
    images = [f.read_bytes() for f in files]
    for category in BUNDLE_CATEGORIES:
        records = cli_records(triton_server.bundle, category, files, TRITON_FPR)
        answer = infer(url, images, [category] * len(images))
        for row, record in enumerate(records):
            assert_answer_is(answer, record, row)
        if category == CATEGORY:  # calibrated: the decisions are given, at the server's rate
            assert all(r["p_value"] is not None and r["threshold"] is not None for r in records)
        else:
            assert all(r["p_value"] is None for r in records)
    # one request of both categories, row by row: the head groups its rows by category
    mixed = infer(url, images[:2], [CATEGORY, OTHER])
    assert_answer_is(mixed, cli_records(triton_server.bundle, CATEGORY, files[:1], TRITON_FPR)[0])
    other = cli_records(triton_server.bundle, OTHER, files[1:2], TRITON_FPR)[0]
    assert_answer_is(mixed, other, row=1)


def test_regions_are_inctrl_run_scores_for_two_calibrated_categories(tiny_bundle, tmp_path):
    """Both categories calibrated, regions served at REGION_FPR: over gRPC, one request at a
    time (batches of 1 in every model, one thread per engine), every record is the one
    ``inctrl-run score --json --batch-size 1 --threads 1`` prints: regions exactly (the same
    patch map to the bit), the rest within 1e-5 (decisions and thresholds are float32 on the
    wire); varied frame sizes, and at least one query of each category with a region."""
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle, calibrated=BUNDLE_CATEGORIES)
    files = query_files(tmp_path / "queries", count=4, seed=90)
    exact = ("--region-fpr", REGION_FPR, "--batch-size", 1, "--threads", 1)
    with serve_bundle(bundle, tmp_path / "repository", region_fpr=REGION_FPR) as served:
        client = TritonClient(served.grpc_url)
        for category in BUNDLE_CATEGORIES:
            want = cli_records(bundle, category, files, TRITON_FPR, *exact)
            got = client.records(category, files)
            assert_same_records(got, want)
            assert [r["regions"] for r in got] == [r["regions"] for r in want], category
            assert [r["patch_residual_map"] for r in got] == [r["patch_residual_map"] for r in want]
            assert any(r["regions"] for r in got), category
            assert {r["inspected_fraction"] < 1 for r in got} == {True, False}  # varied frames
    ports = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    refused = run_main(inctrl_run, "serve", bundle, *ports, "--region-fpr", "1.5")
    refused.assert_refused("--region-fpr must be a rate")


def test_a_tiled_category_is_served_as_inctrl_run_scores_it(tiny_bundle, tmp_path):
    """A category registered and calibrated with 1x2 tiles on 520 x 300 frames, served: each
    frame's record (its tiles reduced to the frame, the deciding tile, the tiling, the
    stitched map's regions) is ``inctrl-run score --json``'s, the encoder runs every frame's
    2 tiles (called from the entry model), a whole category is served beside it, and a frame
    of another size is refused alone, in one line."""
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle, categories=(OTHER,), calibrated=())
    frame = (300, 520)
    detector = Detector.open(bundle)
    detector.register(
        CATEGORY, random_images(2, seed=120, size=frame), tiling=Tiling(1, 2, whole=True)
    )
    detector.calibrate(CATEGORY, random_images(12, seed=121, size=frame))
    detector.close()
    frames = [tmp_path / f"frame{i}.png" for i in range(3)]
    for file, image in zip(frames, random_images(3, seed=122, size=frame), strict=True):
        file.write_bytes(png_bytes(image))
    other = query_files(tmp_path / "whole", count=2, seed=123)
    exact = ("--region-fpr", REGION_FPR, "--batch-size", 1, "--threads", 1)
    with serve_bundle(bundle, tmp_path / "repository", region_fpr=REGION_FPR) as served:
        client = TritonClient(served.grpc_url)
        before = encoder_batches(served.http_url)
        got = client.records(CATEGORY, frames)
        after = encoder_batches(served.http_url)
        want = cli_records(bundle, CATEGORY, frames, TRITON_FPR, *exact)
        assert_same_records(got, want)
        assert all((r["tiling"]["rows"], r["tiling"]["columns"]) == (1, 2) for r in got)
        assert [r["decisive_tile"] for r in got] == [r["decisive_tile"] for r in want]
        assert all(r["inspected_fraction"] == 1.0 and r["regions"] is not None for r in got)
        encoded = sum(size * (after.get(size, 0) - before.get(size, 0)) for size in after)
        assert encoded == 3 * len(frames)  # two tiles and the whole view a frame
        whole = client.records(OTHER, other)
        assert_same_records(whole, cli_records(bundle, OTHER, other, TRITON_FPR))
        assert all(r["tiling"] is None and r["decisive_tile"] is None for r in whole)
        message = refusal(served.http_url, other[0].read_bytes(), CATEGORY)
        assert "its tiles are compared with" in message and "\n" not in message, message
        assert_same_records(client.records(CATEGORY, frames[:1]), want[:1])
        # A liveness probe of a tiled category: its generated image is refused, with what to do;
        # one of its frames answers.
        probe = ["client", served.http_url, "--category", CATEGORY, "--check"]
        refused = run_main(inctrl_run, *probe)
        assert refused.code == 2 and "give --check an image of the category" in refused.err
        answered = run_main(inctrl_run, *probe, frames[0])
        assert answered.code == 0 and answered.err.startswith("ok: "), answered.err


def encoder_batches(url: str) -> dict[int, int]:
    """Executed batch size -> count of the encoder's executions (Triton's statistics)."""
    import tritonclient.http

    client = tritonclient.http.InferenceServerClient(url.split("://")[1])
    stats = client.get_inference_statistics(ENCODER)["model_stats"]
    client.close()
    return {
        int(batch["batch_size"]): int(batch["compute_infer"]["count"])
        for model in stats
        for batch in model.get("batch_stats", [])
    }


def test_concurrent_requests_of_both_categories_batch_in_the_encoder(triton_server, tmp_path):
    images = random_images(16, seed=50, size=VARIED_SIZES)
    categories = [BUNDLE_CATEGORIES[i % 2] for i in range(len(images))]
    detector = Detector.open(triton_server.bundle)
    want = [
        detector.results(c, [image])[0].score for c, image in zip(categories, images, strict=True)
    ]
    encoded = [png_bytes(image) for image in images]
    before = encoder_batches(triton_server.http_url)

    def ask(index: int) -> tuple[int, float, float]:
        began = time.perf_counter()
        answer = infer(triton_server.http_url, [encoded[index]], [categories[index]])
        return index, float(answer["score"][0, 0]), time.perf_counter() - began

    jobs = [i for _ in range(3) for i in range(len(images))]  # 48 requests, 8 at a time
    with ThreadPoolExecutor(8) as pool:
        answered = list(pool.map(ask, jobs, timeout=TIMEOUT_S * 2))
    assert len(answered) == len(jobs)
    for index, score, _ in answered:  # each answer is its own image's, none swapped
        assert abs(score - want[index]) <= 1e-5, (index, score, want[index])
    after = encoder_batches(triton_server.http_url)
    executed = {size: after.get(size, 0) - before.get(size, 0) for size in after}
    assert sum(size * count for size, count in executed.items()) == len(jobs)
    assert any(size > 1 and count > 0 for size, count in executed.items()), executed
    latencies = sorted(seconds for *_, seconds in answered)
    print(f"encoder batches {executed}; latency p50 {latencies[len(latencies) // 2]:.3f} s")


def test_bad_requests_fail_alone_and_the_next_is_answered(triton_server, tmp_path):
    url = triton_server.http_url
    (file,) = query_files(tmp_path, count=1)
    good = file.read_bytes()
    record = cli_records(triton_server.bundle, CATEGORY, [file], TRITON_FPR)[0]
    elongated = png_bytes(np.zeros((1, 50000, 3), np.uint8))  # 240 x 12,000,000 once resized
    cases = [
        (good, "nope", "category 'nope' has no text prior"),
        (good, "../x", "category '../x' has no text prior"),
        (b"GIF89a not really", CATEGORY, "not a readable image"),
        (elongated, CATEGORY, "too many pixels once resized"),
    ]
    for image, category, phrase in cases:
        assert phrase in refusal(url, image, category)
        assert_answer_is(infer(url, [good], [CATEGORY]), record)
    # a bad request batched with good ones: the good ones are answered
    with ThreadPoolExecutor(4) as pool:
        bad = pool.submit(refusal, url, b"broken", CATEGORY)
        answers = list(pool.map(lambda _: infer(url, [good], [CATEGORY]), range(6)))
        assert "not a readable image" in bad.result(TIMEOUT_S)
    for answer in answers:
        assert_answer_is(answer, record)


def test_a_category_registered_while_serving_is_served(tiny_bundle, tmp_path):
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle, categories=(CATEGORY,))
    files = query_files(tmp_path / "queries", count=2)
    images = [f.read_bytes() for f in files]
    shots = query_files(tmp_path / "shots", count=2, seed=60)
    with serve_bundle(bundle, tmp_path / "repository") as served:
        message = refusal(served.http_url, images[0], OTHER)
        assert f"category {OTHER!r} is not registered" in message
        assert "inctrl-run register" in message
        outcome = run_main(
            inctrl_run, "register", bundle, "--category", OTHER, "--shot", shots[0],
            "--shot", shots[1],
        )  # fmt: skip
        assert outcome.code == 0, outcome.err
        answer = infer(served.grpc_url, images, [OTHER, OTHER])
        for row, record in enumerate(cli_records(bundle, OTHER, files, TRITON_FPR)):
            assert_answer_is(answer, record, row)
        # registered anew on other shots (and so uncalibrated): the new bank is served
        before = infer(served.http_url, images[:1], [CATEGORY])
        outcome = run_main(inctrl_run, "register", bundle, "--category", CATEGORY,
                           "--shot", shots[0])  # fmt: skip
        assert outcome.code == 0, outcome.err
        after = infer(served.http_url, images[:1], [CATEGORY])
        assert abs(float(after["score"][0, 0]) - float(before["score"][0, 0])) > 1e-6
        assert_answer_is(after, cli_records(bundle, CATEGORY, files[:1], TRITON_FPR)[0])


def test_models_check_the_bundle_when_they_load(tiny_bundle, tmp_path):
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    repository = write_repository(bundle, tmp_path / "repository", threads=1)
    data = bytearray((bundle / "head.onnx").read_bytes())
    data[len(data) // 2] ^= 1  # the same size, another sha256
    (bundle / "head.onnx").write_bytes(bytes(data))
    server = TritonServer(repository)
    with pytest.raises(InputError) as refused, server:
        pass
    message = str(refused.value)
    assert "failed to load" in message and "head.onnx: sha256 differs" in message, message
    assert "\n" not in message
    assert server.process is None and server.folder is None


def test_a_killed_server_leaves_no_shared_memory(tiny_bundle, tmp_path):
    """Stopped with no time to exit cleanly (the group SIGKILLed at once), the server's stubs
    cannot remove what they made: ``stop`` removes their shared memory (found by the server's
    own prefix) and their empty Python environment folders."""
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle, categories=(CATEGORY,))
    envs = set(glob.glob(PYTHON_ENVS))
    server = TritonServer(write_repository(bundle, tmp_path / "repository", threads=1))
    with server:
        regions = list(SHARED_MEMORY.glob(f"{server.shm_prefix}*"))
        assert len(regions) >= 2  # one a stub: the entry, the encoder
        server.stop(timeout=0)
    assert not [region for region in regions if region.exists()]
    assert set(glob.glob(PYTHON_ENVS)) <= envs


def _processes_naming(text: str) -> list[str]:
    """Command lines of the live processes that name ``text`` (e.g. a temporary folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and text in command:
            found.append(command)
    return found


def _read_until(process: subprocess.Popen, last: str, timeout: float) -> list[str]:
    """The lines ``process`` prints on stdout until ``last`` (within ``timeout`` seconds)."""
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1].strip() != last:
        try:
            seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        except queue.Empty:
            raise AssertionError(f"no {last!r} in {timeout} s: {seen}") from None
    return seen


@pytest.mark.cli
def test_serve_answers_and_leaves_nothing_after_sigterm(triton_server, tmp_path):
    (file,) = query_files(tmp_path, count=1)
    code = "import sys; from inctrl_runtime.cli import main; main(sys.argv[1:])"
    ports = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(triton_server.bundle), *ports, "--threads",
         "1", "--fpr", str(TRITON_FPR), "--region-fpr", str(REGION_FPR)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _read_until(process, "Ctrl-C stops it", TIMEOUT_S * 2)
        fields = dict(line.split(None, 1) for line in lines if line.startswith("  "))
        folder = Path(fields["repository"].split(" (")[0]).parent
        assert folder.is_dir() and _processes_naming(str(folder))
        options = ("--region-fpr", REGION_FPR)
        record = cli_records(triton_server.bundle, CATEGORY, [file], TRITON_FPR, *options)[0]
        assert_answer_is(infer(fields["HTTP"].strip(), [file.read_bytes()], [CATEGORY]), record)
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:  # a failed test: SIGTERM lets it clean up, then KILL
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    assert "interrupted by SIGTERM" in process.stderr.read()
    assert not folder.exists()
    assert _processes_naming(str(folder)) == []


def gauges(url: str) -> dict[tuple[str, str], float]:
    """The inctrl gauges on a Prometheus metrics endpoint: (name, category) -> value."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("inctrl_"):
            name, rest = line.split("{", 1)
            labels, value = rest.rsplit("}", 1)
            category = dict(pair.split("=", 1) for pair in labels.replace('"', "").split(","))[
                "category"
            ]
            found[name, category] = float(value)
    return found


@pytest.mark.cli
def test_serve_publishes_each_calibrated_categorys_drift_gauges(tiny_bundle, tmp_path):
    """A real ``inctrl-run serve`` with two entry instances: after concurrent requests, its
    Prometheus endpoint shows the drift gauges of the calibrated category (the monitor's
    evidence and alarm, the share flagged, as the monitor kept in the bundle says) and none of
    the uncalibrated one; both instances' parts are in the monitor, in one order, and a
    liveness probe's image is not."""
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle)  # candle calibrated, metal_nut not
    files = query_files(tmp_path / "queries", count=3, seed=130)
    code = "import sys; from inctrl_runtime.cli import main; main(sys.argv[1:])"
    ports = ("--http-port", "0", "--grpc-port", "0", "--metrics-port", "0")
    process = subprocess.Popen(
        [sys.executable, "-c", code, "serve", str(bundle), *ports, "--threads", "1", "--fpr",
         str(TRITON_FPR), "--drift-delta", "0.05", "--instances", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        lines = _read_until(process, "Ctrl-C stops it", TIMEOUT_S * 2)
        fields = dict(line.split(None, 1) for line in lines if line.startswith("  "))
        client = TritonClient(fields["HTTP"].strip())
        records = client.records(CATEGORY, files * 4, concurrency=4)  # both entry instances
        client.records(OTHER, files[:1])
        found = gauges(fields["metrics"].strip())
        monitor = Detector.open(bundle).monitor(CATEGORY)
        status = monitor.status()
        assert status.observed == 12 and status.flagged == sum(r["anomalous"] for r in records)
        assert found["inctrl_drift_evidence", CATEGORY] == pytest.approx(status.evidence)
        assert found["inctrl_drift_alarm", CATEGORY] == float(status.alarm(0.05)) == 0.0
        assert found["inctrl_flagged_rate", CATEGORY] == pytest.approx(status.flag_rate)
        assert not [key for key in found if key[1] == OTHER]
        probe = run_main(inctrl_run, "client", fields["HTTP"].strip(), "--category", CATEGORY,
                         "--check")  # fmt: skip
        assert probe.code == 0 and probe.err.startswith("ok: "), probe.err
        assert monitor.status().observed == 12  # a liveness probe's image is not a part
        history = monitor.history()  # every part, in the one order the writers agreed on
        assert sorted(history["score"]) == pytest.approx(sorted(r["score"] for r in records))
        state = MonitorState.start(monitor.bank.calibration.scores, monitor.seed)
        assert np.array_equal(state.observe(history["score"]), history["evidence"])
        process.send_signal(signal.SIGTERM)
        assert process.wait(TIMEOUT_S) == 128 + signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.cli
def test_serve_without_the_serve_extra_says_what_to_install(tiny_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "pytriton", None)  # as if nvidia-pytriton were missing
    outcome = run_main(inctrl_run, "serve", tiny_bundle)
    outcome.assert_refused('pip install "inctrl[serve]"')


@pytest.mark.cli
@pytest.mark.parametrize(
    ("option", "value", "phrase"),
    [
        ("--host", "999.1.1.1", "--host 999.1.1.1: this machine cannot listen there"),
        ("--host", "10.255.255.1", "--host 10.255.255.1: this machine cannot listen there"),
        ("--http-port", "70000", "--http-port 70000: not a port"),
        ("--grpc-port", "-1", "--grpc-port -1: not a port"),
    ],
)
def test_serve_refuses_an_address_it_cannot_listen_on(tiny_bundle, option, value, phrase):
    require_serving()
    before = set(Path(tempfile.gettempdir()).glob("inctrl-serve-*"))
    outcome = run_main(inctrl_run, "serve", tiny_bundle, option, value)
    outcome.assert_refused(phrase)
    assert set(Path(tempfile.gettempdir()).glob("inctrl-serve-*")) == before  # nothing left


@pytest.mark.cli
def test_the_client_on_the_grpc_port_over_http_says_so(triton_server, tmp_path):
    (file,) = query_files(tmp_path, count=1)
    port = triton_server.grpc_url.rsplit(":", 1)[1]
    outcome = run_main(inctrl_run, "client", f"http://127.0.0.1:{port}", "--category",
                       CATEGORY, file)  # fmt: skip
    outcome.assert_refused("the answer is not HTTP", "grpc://HOST:PORT")


@pytest.mark.cli
def test_a_port_in_use_is_said_and_leaves_nothing(tiny_bundle, tmp_path):
    """The server cannot start (its HTTP port is taken): the line quotes why, not the CUDA
    noise a CPU machine logs first, and its stubs' shared memory and folders are gone."""
    require_serving()
    envs = set(glob.glob(PYTHON_ENVS))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = TritonServer(
            write_repository(tiny_bundle, tmp_path / "r", threads=1), http_port=port
        )
        with pytest.raises(InputError, match="already in use") as refused, server:
            pass
    assert "CudaDriverHelper" not in str(refused.value)
    assert not list(SHARED_MEMORY.glob(f"{server.shm_prefix}*"))
    assert set(glob.glob(PYTHON_ENVS)) <= envs and server.folder is None
