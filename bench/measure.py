"""Measure one backend as a ``Subject``: the runtime's ``Detector`` or the PyTorch model
(``torch_side``) through the same calls, on seeded random camera frames (preprocessing timed)."""

from __future__ import annotations

import contextlib
import functools
import gc
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from inctrl_bench.accuracy import REFERENCE, Accuracy, EvalData, EvalOutputs, eval_scores
from inctrl_bench.artifacts import Artifacts, RowSource, engine_profile
from inctrl_bench.backends import (
    CATALOGUE,
    FRAME,
    GPU_INDEX,
    TILED_FRAME,
    Backend,
    Unavailable,
    check_runnable,
    random_frames,
)
from inctrl_bench.flops import ModelShape, query_flops
from inctrl_bench.machine import Peak, PeakRss, Progress, StageClock, Timing, cuda_gpu
from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl_bench.suite import BenchSettings
    from inctrl_bench.triton_backend import ServedRun
    from inctrl_runtime.detector import Detector
    from inctrl_runtime.engines.tensorrt.plans import Build
    from inctrl_runtime.tiling import Tiling

PREPROCESS, ENCODER, HEAD, REGISTER = "preprocess", "encoder", "head", "reference"
QUERY_STAGES = (PREPROCESS, ENCODER, HEAD)
MB = 2**20
# What peak_rss_mb covers, by whether the kernel's high-water mark could be reset (PeakRss).
RSS_SCOPE = {
    True: "whole process, peak during the backend's load and measurements",
    False: "whole process, lifetime peak up to the backend's end (the peak could not be reset)",
}
Images = Sequence[np.ndarray]


@dataclass
class Subject:
    """A backend prepared with a category's bank and text prior (``head`` scores against them).
    ``register``: None where no bank is kept between queries; ``before``: stages redone before
    every query (the authors' way); ``max_batch``: the largest batch it scores right;
    ``text_prior_ms``: the text prior's one-time cost, ours and the authors' way; ``engine``:
    what runs the graphs; ``gpu_ms``: the GPU time of the last query where the engines measure
    it (CUDA events); ``build``: the TensorRT build whose plans run; ``final_scores``: the
    final score of each query of ``head``'s outputs, as float64 numbers; ``quantization``: how
    an int8 encoder was quantized (``QuantizationRecord.summary``)."""

    shape: ModelShape
    pixels: Callable[[Images], Any]
    encode: Callable[[Any], Any]
    head: Callable[[Any], Any]
    register: Callable[[Images], Any] | None
    flops_per_query: int
    before: dict[str, Callable[[], object]] = field(default_factory=dict)
    max_batch: int | None = None
    sync: Callable[[], object] = lambda: None
    gpu_peak_bytes: Callable[[], int | None] = lambda: None
    text_prior_ms: dict[str, float] | None = None
    engine: str | None = None
    gpu_ms: Callable[[], float | None] = lambda: None
    build: Build | None = None
    final_scores: Callable[[Any], np.ndarray] = lambda scores: np.asarray(scores.score, np.float64)
    quantization: dict | None = None

    def query(self, images: Images, clock: StageClock) -> None:
        for stage, step in self.before.items():
            clock(stage, step)
        features = clock(ENCODER, self.encode, clock(PREPROCESS, self.pixels, images))
        clock(HEAD, self.head, features)
        clock.gpu_ms = self.gpu_ms()


Prepare = Callable[[Images, str], Subject]  # (prompt images, category) -> a prepared Subject


def tiled(prepare: Prepare, tiling: Tiling) -> Prepare:
    """``prepare`` for frames scored view by view (``inctrl-run register --tiles``): a bank per
    group of view positions (``Tiling.groups``: the grid's tiles, the whole view) from the
    prompts' views at those positions; each query's views are cut as part of its
    preprocessing, each group's views of every query encoded in one batch and scored against
    its bank, and the views' scores reduced to the frames' (``view_scores``,
    ``frame_scores``), as the runtime does. The arithmetic is, per group g, |g| queries
    against k * |g| prompts."""
    from inctrl_runtime.preprocess import Preprocessing, decode
    from inctrl_runtime.results import Scores, frame_scores, view_scores

    groups = tiling.groups()

    def grouped(frames: Images) -> list[list]:
        """The frames' views, a list per group, frame by frame within it."""
        cut = [decode(frame, tiling=tiling).views for frame in frames]
        return [[views[t] for views in cut for t in group] for group in groups]

    def prepare_tiled(prompts: Images, category: str) -> Subject:
        subjects = [prepare(views, category) for views in grouped(prompts)]
        subject = subjects[0]
        if subject.shape.image_size != Preprocessing().size:  # the size tiles are cut for
            raise Unavailable(f"--tiles cuts tiles for a {Preprocessing().size}-px model, this "
                              f"one takes {subject.shape.image_size} px")  # fmt: skip
        # each group's own stages, taken before the first subject's are replaced
        stages = [(s.pixels, s.encode, s.head) for s in subjects]
        register = subject.register

        def pixels(frames: Images) -> tuple:
            return tuple(stage[0](views) for stage, views in zip(stages, grouped(frames),
                                                                 strict=True))  # fmt: skip

        def encode(pixel_groups: tuple) -> tuple:
            return tuple(stage[1](part) for stage, part in zip(stages, pixel_groups, strict=True))

        def head(features: tuple) -> Scores:
            parts = [Scores(*(_numpy(getattr(stage[2](f), name)) for name in Scores._fields))
                     for stage, f in zip(stages, features, strict=True)]  # fmt: skip
            return frame_scores(view_scores(parts, groups, tiling.count), tiling.count)[0]

        subject.pixels, subject.encode, subject.head = pixels, encode, head
        subject.register = None if register is None else (
            lambda frames: [register(views) for views in grouped(frames)])  # fmt: skip
        subject.flops_per_query = sum(
            len(group) * query_flops(subject.shape, len(prompts) * len(group)) for group in groups
        )
        subject.final_scores = lambda scores: np.asarray(scores.score, np.float64)
        return subject

    return prepare_tiled


def _numpy(value: Any) -> np.ndarray:
    """A head output as numpy: torch tensors are brought to the CPU."""
    return value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)


def _open_detector(backend: Backend, bundle: Path, build: str | None) -> Detector:
    """The bundle's graphs on the backend's device; the tensorrt kind runs the plans of
    ``build``."""
    from inctrl_runtime.detector import Detector

    return Detector.open(bundle, device=backend.runtime_device or "cpu", build=build)


def _query_gpu_ms(detector: Detector) -> float | None:
    """The GPU time of the last query on TensorRT engines (``TrtEngine.gpu_ms``): the
    encoder's and the head's."""
    times = (detector.encoder_engine.gpu_ms, detector.head_engine.gpu_ms)
    return None if None in times else sum(times)


def _synchronize(detector: Detector) -> None:
    """Wait for both TensorRT engines' streams, so that a stage's wall time holds the GPU work
    it queued (the encoder's outputs stay on the GPU; ``torch.cuda.synchronize`` for torch)."""
    for engine in (detector.encoder_engine, detector.head_engine):
        engine.stream.synchronize()


@contextlib.contextmanager
def open_runtime(backend: Backend, bundle: Path, build: str | None = None) -> Iterator[Prepare]:
    """A bundle's engines on the backend's device, through ``inctrl_runtime.Detector``; for
    the tensorrt kind, the plans of the bundle's TensorRT build ``build``."""
    detector = _open_detector(backend, bundle, build)
    shape = ModelShape.from_config(detector.bundle.model.config)
    quantization = detector.bundle.graphs["encoder"].quantization

    def prepare(prompts: Images, category: str) -> Subject:
        bank_inputs = detector.bank_inputs(category, detector.reference(prompts))
        subject = Subject(
            shape,
            detector.pixels,
            functools.partial(detector.encode, on_device=True),
            lambda features: detector.head(features, bank_inputs[0]),
            detector.reference,
            query_flops(shape, len(prompts)),
            engine=detector.backend,
            quantization=quantization.summary() if quantization else None,
        )
        if backend.kind == "tensorrt":
            subject.sync = functools.partial(_synchronize, detector)
            subject.gpu_ms = functools.partial(_query_gpu_ms, detector)
            subject.build = detector.encoder_engine.build
        return subject

    try:
        yield prepare
    finally:
        detector.close()


@dataclass(frozen=True)
class Throughput:
    """Images per second at one batch size, from the median batch time."""

    batch: int
    images_per_s: float
    ms_per_image: float
    timing: Timing

    @classmethod
    def of(cls, batch: int, timing: Timing) -> Throughput:
        return cls(batch, batch * 1e3 / timing.p50_ms, timing.p50_ms / batch, timing)


@dataclass(frozen=True)
class Registration:
    """Encoding k prompt images into a reference bank."""

    shots: int
    timing: Timing


@dataclass
class BackendResult:
    """Everything measured for one backend; only ``reason`` when it is not available."""

    name: str
    kind: str
    precision: str
    device: str
    available: bool = False
    reason: str | None = None
    model: str | None = None
    load_s: float | None = None
    latency: Timing | None = None
    throughput: list[Throughput] = field(default_factory=list)
    registration: list[Registration] = field(default_factory=list)
    text_prior_ms: dict[str, float] | None = None
    flops_per_query: int | None = None
    achieved_gflops: float | None = None
    peak_percent: float | None = None
    peak_rss_mb: float | None = None
    peak_rss_scope: str | None = None
    gpu_peak_mb: float | None = None
    speedup_vs_authors: dict[str, float] | None = None
    speedup_vs_torch_fp32: dict[str, float] | None = None
    engine: str | None = None  # what ran the graphs, e.g. onnxruntime-cuda, tensorrt-lean
    quantization: dict | None = None  # an int8 encoder's: format, method, calibration images
    gpu: dict[str, str] | None = None  # a GPU row's GPU: name, compute capability
    # The TensorRT build that ran: its key, both plans' build time (as recorded) and size.
    engine_build: str | None = None
    build_s: float | None = None
    plan_mb: float | None = None
    shape: ModelShape | None = None  # the model's numbers, reported once per model
    accuracy: Accuracy | None = None  # with --eval: AUROC and score drift on its data
    served: list[ServedRun] = field(default_factory=list)  # a served row's, by concurrency

    @property
    def largest_batch(self) -> Throughput:
        return self.throughput[-1]  # batch sizes are measured in increasing order

    def measure(
        self, prepare: Prepare, settings: BenchSettings, category: str, progress: Progress
    ) -> Subject:
        """Latency, throughput per batch, registration per k, arithmetic rate; the subject."""
        batches, shots = settings.batches, settings.shots
        rng = np.random.default_rng(settings.seed)
        # Resizing and cropping a camera frame (or cutting its tiles) is part of each query.
        frame = FRAME if settings.tiles is None else TILED_FRAME
        frames = random_frames(rng, batches[-1], frame)
        prompts = random_frames(rng, shots[-1], frame)
        subject = prepare(prompts[: shots[0]], category)
        timed = functools.partial(Timing.measure, repeats=settings.repeats, sync=subject.sync)
        progress.step(f"{self.name}: latency at batch 1")
        self.latency = timed(functools.partial(subject.query, frames[:1]))
        # A backend limited below every batch asked for is measured at batch 1, its only size.
        for batch in [b for b in batches if b <= (subject.max_batch or b)] or [1]:
            progress.step(f"{self.name}: throughput at batch {batch}")
            run = functools.partial(subject.query, frames[:batch])
            self.throughput.append(Throughput.of(batch, self.latency if batch == 1 else timed(run)))
        for k in shots if subject.register else ():
            progress.step(f"{self.name}: registering {k} prompt images")
            timing = timed(lambda clock, k=k: clock(REGISTER, subject.register, prompts[:k]))
            self.registration.append(Registration(k, timing))
        self.available, self.shape, self.model = True, subject.shape, subject.shape.name
        self.text_prior_ms, self.flops_per_query = subject.text_prior_ms, subject.flops_per_query
        self.achieved_gflops = self.flops_per_query * self.largest_batch.images_per_s / 1e9
        self.engine, self.quantization = subject.engine, subject.quantization
        if subject.build is not None:
            plans = subject.build.plans.values()
            self.engine_build = subject.build.key
            self.build_s = sum(plan.build_seconds for plan in plans)
            self.plan_mb = sum(plan.bytes for plan in plans) / MB
        return subject

    def to_dict(self) -> dict:
        record = asdict(self)
        del record["shape"]
        record["accuracy"] = self.accuracy.to_dict() if self.accuracy else None
        return record


def _source(backend: Backend, settings: BenchSettings, artifacts: Artifacts) -> RowSource:
    """What the backend runs: a checkpoint (None: the demo) or a bundle, and the TensorRT build
    for the tensorrt kind (else None)."""
    if backend.uses_torch:
        return RowSource(artifacts.checkpoint(), None)
    if backend.kind == "tensorrt":
        profile = engine_profile(settings.batches, settings.shots)
        return artifacts.engines(backend.precision, *profile)
    return RowSource(artifacts.bundle(backend.precision), None)


def _open(backend: Backend, device: str, source: RowSource, stack) -> Prepare:
    """Load the model or start the engines; a file that will not load is this row's reason."""
    path, build = source
    try:
        if backend.uses_torch:
            from inctrl_bench.torch_side import open_torch

            return stack.enter_context(open_torch(backend, path, device))
        return stack.enter_context(open_runtime(backend, path, build))
    except InputError as err:
        raise Unavailable(f"{path or 'the demo'} does not load: {err}") from None


def bench_backend(
    backend: Backend,
    settings: BenchSettings,
    artifacts: Artifacts,
    peak: Peak,
    progress: Progress,
    data: EvalData | None = None,
) -> BackendResult:
    """Open and measure one backend, then score ``data`` with it (after the memory peak's
    window); an unavailable one comes back with the reason."""
    if backend.kind == "triton":
        from inctrl_bench.triton_backend import bench_triton

        return bench_triton(backend, settings, artifacts, progress)
    device = settings.device
    result = BackendResult(backend.name, backend.kind, backend.precision, backend.device or device)
    try:
        if settings.tiling is not None and backend.kind == "authors":
            raise Unavailable("the authors' way scores one image at a time: no --tiles")
        check_runnable(backend, device)
        source = _source(backend, settings, artifacts)
        progress.step(f"{backend.name}: loading")
        began = time.perf_counter()
        with contextlib.ExitStack() as stack:
            with PeakRss() as rss:
                prepare = _open(backend, device, source, stack)
                if settings.tiling is not None:
                    prepare = tiled(prepare, settings.tiling)
                result.load_s = time.perf_counter() - began
                subject = result.measure(prepare, settings, artifacts.category, progress)
            gpu_bytes = subject.gpu_peak_bytes()
            if data is not None:
                scores = eval_scores(prepare, data, settings.batches[-1], backend.name, progress)
                result.accuracy = Accuracy.of(data, backend.precision, scores)
    except Unavailable as err:
        result.reason = str(err)
        progress.done(f"{backend.name}: not available: {err}")
        return result
    result.peak_percent = 100 * result.achieved_gflops / peak.gflops if peak.gflops else None
    if rss.peak_bytes is not None:
        result.peak_rss_mb, result.peak_rss_scope = rss.peak_bytes / MB, RSS_SCOPE[rss.since_entry]
    result.gpu_peak_mb = gpu_bytes / MB if gpu_bytes is not None else None
    result.gpu = cuda_gpu(GPU_INDEX) if result.device == "cuda" else None
    del subject, prepare
    gc.collect()
    largest = result.largest_batch
    auroc = f", AUROC {result.accuracy.mean_auroc:.3f}" if result.accuracy else ""
    progress.done(
        f"{backend.name}: {result.latency.p50_ms:.1f} ms a query at batch 1, "
        f"{largest.images_per_s:.1f} images/s at batch {largest.batch}{auroc} "
        f"({time.perf_counter() - began:.1f} s)"
    )
    return result


def reference_scores(
    settings: BenchSettings, artifacts: Artifacts, data: EvalData, progress: Progress
) -> dict[str, EvalOutputs]:
    """torch-fp32's outputs on ``data`` (``eval_scores``), for the drift of the other rows when
    its own row was not benched; ``Unavailable`` says why it cannot run here."""
    backend = next(b for b in CATALOGUE if b.name == REFERENCE)
    check_runnable(backend, settings.device)
    source = _source(backend, settings, artifacts)
    with contextlib.ExitStack() as stack:
        prepare = _open(backend, settings.device, source, stack)
        return eval_scores(prepare, data, settings.batches[-1], REFERENCE, progress)
