"""A client of a served bundle (``inctrl-run serve``, ``inctrl-export triton``): images in, the
records of ``inctrl-run score --json`` out, over HTTP or gRPC (``tritonclient`` underneath).

    client = TritonClient("http://127.0.0.1:8000")        # or grpc://127.0.0.1:8001
    records = client.records("candle", ["a.png", "b.png"], concurrency=4)

Each image is one request to the entry point. With ``concurrency`` N, N threads each hold their
own connection (tritonclient's HTTP client is not thread-safe) and take the next request when
they finish one, so the server's dynamic batcher sees up to N requests at once; every answer
is kept at its own request's place.
"""

from __future__ import annotations

import contextlib
import http.client
import importlib
import io
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from inctrl_runtime.errors import InputError
from inctrl_runtime.preprocess import ImageSource, describe, image_sequence, load_image
from inctrl_runtime.triton.names import CATEGORY, ENCODER, ENTRY, IMAGE, OUTPUTS, WATCHED
from inctrl_runtime.triton.wire import record_of

# Triton's own default ports, for a URL that names none.
DEFAULT_PORTS = {"http": 8000, "grpc": 8001}
TIMEOUT_S = 60.0  # the longest a request may wait for its answer
# gRPC's codes for a server that is not there, or did not answer in time.
_NO_ANSWER = ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")


@dataclass(frozen=True)
class Request:
    """One image to score: its category, its name in the record (``describe``) and the
    encoded bytes the server decodes."""

    category: str
    image: str
    data: bytes
    watched: bool = True  # a part of the category's drift monitor (False: a probe's image)

    @classmethod
    def of(cls, category: str, source: ImageSource, watched: bool = True) -> Request:
        return cls(category, describe(source), encoded_image(source), watched)


@dataclass(frozen=True)
class Answer:
    """A request's record (``Result.record()``'s fields) and its client-observed latency."""

    record: dict
    latency_s: float


@dataclass(frozen=True)
class ModelStatistics:
    """What Triton's statistics API says one model ran since it loaded: the requests it
    answered, the batches it executed, and how many batches of each size."""

    name: str
    inference_count: int
    execution_count: int
    batch_sizes: dict[int, int]  # executed batch size -> how many executions


def encoded_image(source: ImageSource) -> bytes:
    """The bytes the server decodes: an image file's own; for a ``.npy`` file, a PIL image or
    an array, the runtime's picture of it (``load_image``, its checks included) as a lossless
    TIFF, which keeps every mode Pillow has, so that the server sees the same pixels."""
    if isinstance(source, (str, os.PathLike)) and Path(source).suffix.lower() != ".npy":
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{path}: no such query image file")
        return path.read_bytes()
    buffer = io.BytesIO()
    load_image(source).save(buffer, format="TIFF")
    return buffer.getvalue()


def parse_url(url: str) -> tuple[str, str]:
    """``http://HOST[:PORT]`` or ``grpc://HOST[:PORT]`` -> (the protocol, ``HOST:PORT``); no
    port: Triton's default for the protocol."""
    parts = urlsplit(url)
    protocol = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if protocol not in DEFAULT_PORTS or not parts.hostname or port == -1:
        raise InputError(
            f"{url!r}: not a Triton server's address; give http://HOST:PORT (HTTP, port 8000 "
            "by default) or grpc://HOST:PORT (gRPC, 8001)"
        )
    if parts.path.strip("/") or parts.query or parts.fragment:
        raise InputError(f"{url!r}: give the server's address alone, without a path or query")
    return protocol, f"{parts.hostname}:{port or DEFAULT_PORTS[protocol]}"


def _batch_size(batch: dict) -> int:
    return int(batch["batch_size"])


class TritonClient:
    """Scores images on a Triton server of a bundle at ``url`` (http:// or grpc://, by scheme).
    It holds no connection between calls, so one client may be used from many threads."""

    def __init__(self, url: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = url
        self.protocol, self.address = parse_url(url)
        self.timeout_s = timeout_s
        try:
            self._triton = importlib.import_module(f"tritonclient.{self.protocol}")
        except ImportError as err:
            raise InputError(
                f'the client needs tritonclient ({err}): pip install "inctrl[serve]"'
            ) from None

    @contextlib.contextmanager
    def _connection(self) -> Iterator:
        """A tritonclient client of the server, for this thread only, closed after."""
        if self.protocol == "http":
            timeouts = {"connection_timeout": self.timeout_s, "network_timeout": self.timeout_s}
            connection = self._triton.InferenceServerClient(self.address, **timeouts)
        else:
            connection = self._triton.InferenceServerClient(self.address)
        try:
            with self._answered():
                yield connection
        finally:
            connection.close()

    @contextlib.contextmanager
    def _answered(self, image: str | None = None) -> Iterator[None]:
        """tritonclient's errors as one line: no server, or the server's own error text."""
        from tritonclient.utils import InferenceServerException

        try:
            yield
        except InferenceServerException as err:
            message = err.message() or str(err)
            if str(err.status()) in _NO_ANSWER:
                raise InputError(self._no_answer(message)) from None
            what = f"{image}: " if image else ""
            raise InputError(f"{what}the server at {self.url} refused it: {message}") from None
        except OSError as err:  # HTTP: refused, no such host, timed out
            raise InputError(self._no_answer(str(err) or type(err).__name__)) from None
        except http.client.HTTPException as err:  # an answer that is not HTTP: the gRPC port?
            raise InputError(
                f"{self.url}: the answer is not HTTP ({type(err).__name__}); is it the server's "
                "gRPC port? ask it as grpc://HOST:PORT"
            ) from None

    def _no_answer(self, detail: str) -> str:
        return (
            f"{self.url}: no answer from a Triton server ({detail}); start one (inctrl-run "
            "serve BUNDLE) or check the address"
        )

    def ready(self) -> bool:
        """Whether a server answers at the URL and its entry point is ready."""
        try:
            with self._connection() as connection:
                return bool(connection.is_model_ready(ENTRY))
        except InputError:
            return False

    def require_ready(self) -> None:
        """Raise the one line that says why the entry point cannot answer: no server, or the
        model not loaded."""
        with self._connection() as connection:
            if not connection.is_model_ready(ENTRY):
                raise InputError(
                    f"{self.url}: the server runs but its model {ENTRY!r} is not ready (it "
                    "may still be loading, or failed to load: see the server's log)"
                )

    def image_size(self) -> int:
        """S, the side of the model's input, from the encoder's configuration: how the
        server's frames became the model's views."""
        with self._connection() as connection:
            if self.protocol == "http":
                config = connection.get_model_config(ENCODER)
            else:
                config = connection.get_model_config(ENCODER, as_json=True)["config"]
        return int(config["input"][0]["dims"][-1])

    def statistics(self) -> dict[str, ModelStatistics]:
        """Per model, what it ran since it loaded (Triton's inference statistics API)."""
        with self._connection() as connection:
            if self.protocol == "http":
                found = connection.get_inference_statistics()
            else:  # JSON from protobuf: 64-bit counts come as strings, zeros left out
                found = connection.get_inference_statistics(as_json=True)
        # One entry per model: a bundle's repository holds one version of each (names.VERSION).
        return {
            model["name"]: ModelStatistics(
                model["name"],
                int(model.get("inference_count", 0)),
                int(model.get("execution_count", 0)),
                {
                    int(batch["batch_size"]): int(batch.get("compute_infer", {}).get("count", 0))
                    for batch in sorted(model.get("batch_stats", []), key=_batch_size)
                },
            )
            for model in found.get("model_stats", [])
        }

    def records(
        self, category: str, images: ImageSource | Sequence[ImageSource], concurrency: int = 1
    ) -> list[dict]:
        """Score images of a category (a single one is a list of one): one record per image,
        in order, equal to ``inctrl-run score --json``'s; up to ``concurrency`` requests at
        once."""
        requests = [Request.of(category, source) for source in image_sequence(images)]
        return [answer.record for answer in self.answers(requests, concurrency)]

    def answers(self, requests: Sequence[Request], concurrency: int = 1) -> list[Answer]:
        """Send every request, ``concurrency`` at a time, each thread on its own connection:
        the answers in the requests' order. The first refused request (in that order) is
        raised as one line, once the requests in flight are answered; none is sent after."""
        if concurrency < 1:
            raise InputError(f"--concurrency {concurrency}: give at least 1")
        if not requests:
            return []
        self.require_ready()
        answers: list[Answer | None] = [None] * len(requests)
        refused: dict[int, InputError] = {}
        pending: queue.SimpleQueue[int] = queue.SimpleQueue()
        for index in range(len(requests)):
            pending.put(index)
        stop = threading.Event()

        def work() -> None:
            with self._connection() as connection:
                while not stop.is_set():
                    try:
                        index = pending.get_nowait()
                    except queue.Empty:
                        return
                    try:
                        answers[index] = self._infer(connection, requests[index])
                    except InputError as err:
                        refused[index] = err
                        stop.set()

        workers = min(concurrency, len(requests))
        if workers == 1:
            work()
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix="triton-client") as pool:
                futures = [pool.submit(work) for _ in range(workers)]
                try:
                    for future in futures:
                        future.result()
                finally:
                    stop.set()  # an interrupt sends nothing more
        if refused:
            raise refused[min(refused)]
        return answers

    def _infer(self, connection, request: Request) -> Answer:
        """One request on ``connection``, and its answer."""
        triton = self._triton
        inputs = []
        for name, value in ((IMAGE, request.data), (CATEGORY, request.category.encode())):
            tensor = triton.InferInput(name, [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[value]], dtype=np.object_))
            inputs.append(tensor)
        if not request.watched:
            tensor = triton.InferInput(WATCHED, [1, 1], "BOOL")
            tensor.set_data_from_numpy(np.array([[False]]))
            inputs.append(tensor)
        if self.protocol == "http":
            outputs = [triton.InferRequestedOutput(n, binary_data=True) for n in OUTPUTS]
            deadline = {}
        else:
            outputs = [triton.InferRequestedOutput(n) for n in OUTPUTS]
            deadline = {"client_timeout": self.timeout_s}
        began = time.perf_counter()
        with self._answered(request.image):
            result = connection.infer(ENTRY, inputs, outputs=outputs, **deadline)
        latency = time.perf_counter() - began
        return Answer(record_of(request.image, result.as_numpy), latency)
