"""An opened backend as the measurements see it: the stages of a query, and prompt registration.

``Runner.run`` is the query path every backend shares (preprocess -> encoder -> head), each
stage timed by the clock it is given. The onnxruntime runner lives here (no torch); the torch
runners are in ``inctrl_bench.torch_side``, imported only when a torch backend runs.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from inctrl_bench.backends import Backend
from inctrl_bench.flops import ModelShape, query_flops
from inctrl_bench.timing import StageClock

if TYPE_CHECKING:
    from inctrl_runtime.detector import Detector

PREPROCESS, ENCODER, HEAD = "preprocess", "encoder", "head"
QUERY_STAGES = (PREPROCESS, ENCODER, HEAD)
Images = Sequence[np.ndarray]


class Runner(ABC):
    """One backend, opened, with a category's reference bank and text prior once ``prepare``d.

    Attributes:
        max_batch: the largest batch it scores correctly (None: any).
        registers: whether it keeps prompts registered (a bank) between queries.
    """

    max_batch: int | None = None
    registers: bool = True

    def __init__(self, backend: Backend, shape: ModelShape, device: str) -> None:
        self.backend = backend
        self.shape = shape
        self.device = device
        self.shots = 0

    @abstractmethod
    def pixels(self, images: Images) -> Any:
        """Preprocessed B x 3 x S x S images."""

    @abstractmethod
    def encode(self, pixels: Any) -> Any:
        """The encoder's features."""

    @abstractmethod
    def head(self, features: Any) -> Any:
        """The head's scores against the prepared bank and prior."""

    @abstractmethod
    def reference(self, prompts: Images) -> Any:
        """A reference bank of the prompt images (prompt registration)."""

    @abstractmethod
    def prepare(self, prompts: Images, category: str) -> None:
        """Build the bank and text prior the queries are scored against."""

    def run(self, images: Images, clock: StageClock) -> None:
        """Score one batch of queries, stage by stage."""
        with clock(PREPROCESS):
            pixels = self.pixels(images)
        with clock(ENCODER):
            features = self.encode(pixels)
        with clock(HEAD):
            self.head(features)

    def sync(self) -> None:  # noqa: B027 (most backends have nothing to wait for)
        """Wait for queued device work (GPU backends)."""

    def session(self) -> contextlib.AbstractContextManager:
        """The context all measurements of this backend run in."""
        return contextlib.nullcontext()

    def gpu_peak_bytes(self) -> int | None:
        """Peak GPU memory this backend allocated, where it can be known."""
        return None

    def flops_per_query(self) -> int:
        """The arithmetic of one query against the prepared bank."""
        return query_flops(self.shape, self.shots)


class RuntimeRunner(Runner):
    """An exported bundle through ``inctrl_runtime.Detector`` (onnxruntime, no torch)."""

    def __init__(self, backend: Backend, detector: Detector) -> None:
        shape = ModelShape.from_config(detector.bundle.manifest["model"]["config"])
        super().__init__(backend, shape, detector.device)
        self.detector = detector
        self.bank_inputs: dict = {}

    def pixels(self, images: Images) -> np.ndarray:
        return self.detector.pixels(images)

    def encode(self, pixels: np.ndarray) -> dict:
        return self.detector.encode(pixels, on_device=True)

    def head(self, features: dict) -> Any:
        return self.detector.head(features, self.bank_inputs)

    def reference(self, prompts: Images) -> Any:
        return self.detector.reference(prompts)

    def prepare(self, prompts: Images, category: str) -> None:
        self.bank_inputs = self.detector.bank_inputs(category, self.detector.reference(prompts))
        self.shots = len(prompts)


def open_runtime_runner(backend: Backend, bundle: str) -> RuntimeRunner:
    """Open a bundle's sessions on the backend's execution provider (all cores)."""
    from inctrl_runtime.detector import Detector

    return RuntimeRunner(backend, Detector.open(bundle, device=backend.runtime_device or "cpu"))
