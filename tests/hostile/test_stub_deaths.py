"""A python stub of a real server killed under load (``kill -9``, as an out-of-memory kill would):
the watchdog that ``inctrl-run serve`` runs (``StubWatchdog``) loads its model again, the
clients see errors only until then, every answer is right, and a tenth of the requests, bad
ones (an unknown category), fail alone throughout. The figures print with ``pytest -s``."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import inctrl_runtime.cli
from inctrl_runtime.triton.client import Request, TritonClient
from inctrl_runtime.triton.names import ENCODER, ENTRY
from inctrl_runtime.triton.watchdog import StubWatchdog, stubs

from helpers import (
    CATEGORY,
    png_bytes,
    random_images,
    register_served,
    require_serving,
    run_main,
    serve_bundle,
)

pytestmark = pytest.mark.parity
CLIENTS = 4
BAD_EVERY = 10  # one request in ten names an unknown category
RECOVERY_S = 20.0  # the longest a model may take to answer again


class Load:
    """``CLIENTS`` threads sending requests back to back, each answer timed and judged."""

    def __init__(self, url: str, image: bytes, score: float) -> None:
        self.url, self.image, self.score = url, image, score
        # (sent, answered, kind): kind "ok", "bad-refused", "error" or "WRONG"
        self.events: list[tuple[float, float, str]] = []
        self.lock, self.stop = threading.Lock(), threading.Event()
        self.threads = [threading.Thread(target=self.send, args=(n,)) for n in range(CLIENTS)]

    def send(self, thread: int) -> None:
        client = TritonClient(self.url, timeout_s=30.0)
        count = 0
        while not self.stop.is_set():
            count += 1
            bad = (count + thread) % BAD_EVERY == 0
            request = Request("nope" if bad else CATEGORY, "q.png", self.image)
            sent = time.monotonic()
            try:
                (answer,) = client.answers([request])
                right = abs(answer.record["score"] - self.score) <= 1e-5
                kind = "WRONG" if bad or not right else "ok"
            except Exception as err:  # noqa: BLE001 - every failure is counted, by kind
                kind = "bad-refused" if bad and "has no text prior" in str(err) else "error"
            with self.lock:
                self.events.append((sent, time.monotonic(), kind))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def first_ok_after(self, moment: float, timeout: float) -> float:
        """When the first request sent after ``moment`` was answered right."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [done for sent, done, kind in self.events if kind == "ok" and sent > moment]
            if found:
                return min(found)
            time.sleep(0.05)
        raise AssertionError(f"no right answer within {timeout} s of the kill")


def test_a_killed_stub_comes_back_under_load(tiny_bundle: Path, tmp_path: Path) -> None:
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle)
    image = png_bytes(random_images(1, seed=90)[0])
    with serve_bundle(bundle, tmp_path / "repository") as served:
        (record,) = TritonClient(served.http_url).records(CATEGORY, [image])
        lines: list[str] = []
        watchdog = StubWatchdog(served.server, interval=0.2, report=lines.append).start()
        outages, windows = {}, []
        try:
            with Load(served.http_url, image, record["score"]) as load:
                for model in (ENTRY, ENCODER):
                    time.sleep(1.0)  # load before the kill
                    (pid,) = stubs(served.server.process.pid)[model]
                    killed = time.monotonic()
                    os.kill(pid, signal.SIGKILL)
                    back = load.first_ok_after(killed, RECOVERY_S)
                    outages[model], windows = back - killed, [*windows, (killed, back)]
                time.sleep(1.0)  # load after the last recovery
        finally:
            watchdog.stop()
    kinds = [kind for _, _, kind in load.events]
    good = [kind for kind in kinds if kind != "bad-refused"]
    # an error is a request in flight at a kill, or sent before its model was back
    stray = [(sent, done) for sent, done, kind in load.events if kind == "error" and not any(
        sent <= back and done >= killed for killed, back in windows)]  # fmt: skip
    print(f"\n{len(kinds)} requests from {CLIENTS} clients, 1 in {BAD_EVERY} bad:")
    for model, seconds in outages.items():
        print(f"  {model} stub killed: the next right answer {seconds:.2f} s later")
    print(f"  errors {kinds.count('error')} (all during outages), right answers {good.count('ok')}"
          f", bad requests refused alone {kinds.count('bad-refused')}, wrong 0")  # fmt: skip
    print("  " + "\n  ".join(lines))
    assert "WRONG" not in kinds  # no good request answered wrong, no bad one answered
    assert watchdog.restarts == 2 and watchdog.failed is None
    assert all(f"{model}: a python stub died; loaded it again" in " ".join(lines)
               for model in outages)  # fmt: skip
    assert max(outages.values()) < RECOVERY_S
    assert kinds.count("bad-refused") >= len(kinds) // (2 * BAD_EVERY)  # bad ones kept coming
    assert not stray  # no error outside an outage
    assert np.mean([kind == "ok" for kind in good]) > 0.5


def test_the_liveness_check_infers(tiny_bundle: Path, tmp_path: Path) -> None:
    """``inctrl-run client URL --check`` sends one image through the entry model: a server
    whose encoder stub died still says it is ready, and the check says it cannot infer."""
    require_serving()
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle)
    with serve_bundle(bundle, tmp_path / "repository") as served:
        checked = run_main(inctrl_runtime.cli.main, "client", served.http_url, "--category",
                           CATEGORY, "--check")  # fmt: skip
        assert checked.code == 0 and checked.err.startswith("ok: "), checked.err
        (pid,) = stubs(served.server.process.pid)[ENCODER]
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
        assert TritonClient(served.http_url).ready()  # what a readiness probe would believe
        broken = run_main(inctrl_runtime.cli.main, "client", served.grpc_url, "--category",
                          CATEGORY, "--check")  # fmt: skip
        broken.assert_refused("is not healthy")
