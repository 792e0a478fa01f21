"""The lean scorer: a checked bundle, an encoder and a head engine, and the few-shot state.

    det = Detector.open("bundle/", device="cpu")
    det.register("candle", ["good_1.png", "good_2.png"])      # references/candle.npz
    for result in det.results("candle", ["a.png", "b.png"]):
        print(result.score); result.heatmap().save("a_map.png")

Every call that encodes images checks what it is given first (``_prepare``: the category, the
bank, the prior, the calibration and the rate, each once) and then runs the one batch loop
(``encoded_batches``): each image is decoded once, and its picture and model view travel with
its features through the batch. A query costs one encoder pass and the head; the encoder's
outputs feed the head as they are (numpy arrays on the CPU, device buffers on a GPU). Which
backend runs the graphs is the engines' business (``inctrl_runtime.engines``): nothing here calls
a backend's API.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inctrl_runtime.batches import (
    EncodedBatch,
    Features,
    Images,
    ProgressUpdate,
    check_frames,
    check_tiled_sources,
    encoded_batches,
)
from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import (
    DEFAULT_FPR,
    Calibration,
    CalibrationWarning,
    check_fpr,
    decision_fields,
)
from inctrl_runtime.drift import DEFAULT_DELTA, check_delta
from inctrl_runtime.drift_store import DriftMonitor
from inctrl_runtime.engines import Engine, open_engines
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import stack_prompts
from inctrl_runtime.preprocess import (
    DEFAULT_HEATMAP_SIZE,
    THUMBNAIL_SIZE,
    ImageSource,
    check_heatmap_size,
    checked_images,
    describe,
    pixel_digest,
    preprocess_many,
    thumbnail,
)
from inctrl_runtime.references import (
    NumpyBank,
    RegisteredBanks,
    check_fits,
    head_feeds,
    read_digest,
)
from inctrl_runtime.regions import RegionRule, region_rule
from inctrl_runtime.results import Result, Scores, frame_scores, to_results, view_scores
from inctrl_runtime.tiling import FrameTiling, Tiling

if TYPE_CHECKING:
    from inctrl_runtime.engines.tensorrt.plans import Build


@dataclass(frozen=True)
class Prepared:
    """A call's inputs, checked once before any image is read: the images, and what each batch
    is scored against (the bank and prior on the head's device, the calibration to decide with
    and its rate; no calibration: no decisions)."""

    images: Images
    batch_size: int
    bank: NumpyBank
    head_inputs: list[dict]  # one per view group of the bank
    calibration: Calibration | None
    fpr: float
    regions: RegionRule | None = None  # the region threshold (None: no regions)
    monitor: DriftMonitor | None = None  # the category's drift monitor (None: not monitored)
    drift_delta: float = DEFAULT_DELTA  # its alarm's false-alarm probability


class Detector:
    """Scores images of a category against its registered normal examples, with no torch."""

    def __init__(self, bundle: Bundle, encoder_engine: Engine, head_engine: Engine) -> None:
        self.bundle = bundle
        self.encoder_engine = encoder_engine
        self.head_engine = head_engine
        self.banks = RegisteredBanks(bundle)

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        strict: bool = True,
        check_files: bool = True,
        build: Build | str | None = None,
    ) -> Detector:
        """Check a bundle and open its engines (each checked against the manifest).

        Args:
            device: ``cpu``, ``cuda[:N]`` or ``ort-tensorrt[:N]`` (onnxruntime's execution
                providers), or ``tensorrt[:N]``: the bundle's native TensorRT plans (built by
                ``inctrl-export tensorrt``) on GPU N, on the full or the lean TensorRT runtime.
            threads: intra-op threads per engine (None: the backend's default, all cores).
            strict: refuse a device whose provider is missing; False warns and uses the CPU
                (onnxruntime devices; ``tensorrt`` always refuses).
            check_files: verify each file's sha256 against the manifest (sizes always are).
            build: with ``tensorrt``, the build to run: a key of the manifest's builds, or a
                build not yet recorded (default: the one this GPU and TensorRT can run).
        """
        checked = Bundle.open(bundle, check_files=check_files)
        if checked.verification is not None:
            checked.verification.warn_if_failed(f"{checked.path}: this bundle")
        engines = open_engines(checked, device, threads, strict, build)
        return cls(checked, engines["encoder"], engines["head"])

    @property
    def device(self) -> str:
        """Where the engines run: ``cpu``, ``cuda``, ``ort-tensorrt`` or ``tensorrt`` (the CPU
        after a fallback)."""
        return self.encoder_engine.device

    @property
    def backend(self) -> str:
        """What scores: e.g. ``onnxruntime-cpu`` (recorded with a calibration)."""
        return self.encoder_engine.backend

    @property
    def precision(self) -> str:
        """The encoder's precision (recorded with a calibration)."""
        return self.bundle.graphs["encoder"].precision

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories this bundle has text priors for."""
        return self.bundle.categories

    def close(self) -> None:
        """Release both engines."""
        self.encoder_engine.close()
        self.head_engine.close()

    # --------------------------------------------------------------------------------- stages
    def pixels(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """B x 3 x S x S float32, preprocessed as the manifest says."""
        return preprocess_many(images, self.bundle.preprocessing)

    def encode(self, pixels: np.ndarray, on_device: bool = False) -> Features:
        """The encoder's outputs (embedding, adapted, patches) for preprocessed images;
        ``on_device`` keeps them in GPU memory when the encoder runs on a GPU."""
        return self.encoder_engine.run({"image": pixels}, keep_on_device=on_device)

    def head(self, features: Features, head_inputs: dict) -> Scores:
        """The residual head on encoded queries and a category's ``bank_inputs``."""
        inputs = {name: features[name] for name in ("embedding", "adapted", "patches")}
        outputs = self.head_engine.run({**inputs, **head_inputs})
        return Scores(**{name: outputs[name] for name in Scores._fields})

    def bank_inputs(self, category: str, bank: NumpyBank | None = None) -> list[dict]:
        """The head's few-shot inputs for a category (its registered bank unless ``bank`` is
        given), one set per view group of the bank, uploaded once to the GPU when the head
        runs there; pass them to ``frame_scores``."""
        return self._prepare(category, (), bank, what=None).head_inputs

    def frame_scores(
        self, bank: NumpyBank, features: Sequence[Features], head_inputs: Sequence[dict]
    ) -> tuple[Scores, np.ndarray | None]:
        """The frames' scores from a batch's features (one per view group of ``bank``, as
        ``encoded_batches`` gives them): the head on each group, the views put back in order
        (``view_scores``) and a tiled bank's views reduced to their frames, with each frame's
        deciding view (``frame_scores``)."""
        parts = [self.head(found, inputs) for found, inputs in zip(features, head_inputs,
                                                                   strict=True)]  # fmt: skip
        return frame_scores(view_scores(parts, bank.groups, bank.tiles), bank.tiles)

    # ------------------------------------------------------------------------- few-shot state
    def reference(
        self,
        prompt_images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        tiling: Tiling | None = None,
    ) -> NumpyBank:
        """Encode k normal prompt images (a single one is a list of one) into a NumpyBank (not
        saved); with ``tiling``, the T tiles of each (every prompt a frame of one size, which
        the bank's queries must have too)."""
        images = checked_images(prompt_images, batch_size, "no prompt images: give at least "
                                 "one normal image of the category")  # fmt: skip
        check_tiled_sources(images, tiling)
        patches, adapted, digests, frames, thumbnails = [], [], [], [], []
        batches = self.encoded_batches(images, batch_size, picture_size=THUMBNAIL_SIZE,
                                       tiling=tiling)  # fmt: skip
        for batch in batches:
            (features,) = batch.features  # every view, prompt by prompt
            patches.append(features["patches"])  # k (x T) x L x P x D
            adapted.append(features["adapted"])
            digests += [pixel_digest(pixels) for pixels in batch.frame_pixels]
            decoded = batch.decoded or []
            frames += [image.frame for image in decoded]
            thumbnails += [
                thumbnail(image.picture) for image in decoded if image.picture is not None
            ]
            if tiling is not None:
                check_frames(batch, frames[0])
        adapted = np.concatenate(adapted)  # (k * T) x E
        views = None
        if tiling is not None and tiling.whole:  # each view position's mean, for its group
            views = adapted.reshape(len(digests), tiling.count, -1).mean(axis=0, dtype=np.float32)
        return NumpyBank(
            patches=np.ascontiguousarray(stack_prompts(np.concatenate(patches))),
            adapted_mean=adapted.mean(axis=0, dtype=np.float32),
            shots=len(digests),
            sources=tuple(describe(source) for source in images),
            digests=tuple(digests),
            encoder_sha256=self.bundle.encoder_sha256,
            tiling=tiling,
            frame_size=None if tiling is None else frames[0],
            thumbnails=np.stack(thumbnails) if len(thumbnails) == len(digests) else None,
            view_adapted=views,
        )

    def register(
        self,
        category: str,
        prompt_images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        selection: dict | None = None,
        tiling: Tiling | None = None,
    ) -> NumpyBank:
        """Build a category's bank and save it as ``references/<category>.npz`` (atomically);
        ``selection`` records how the prompts were chosen from a pool (``NumpyBank``), and
        ``tiling`` makes it a tiled bank (``reference``)."""
        self.bundle.prior(category)  # an unknown category fails before any work
        self.bundle.reference_path(category)  # a name that cannot be a file, too
        bank = self.reference(prompt_images, batch_size, tiling)
        bank = replace(bank, category=category, selection=selection)
        self.banks.save(bank)
        return bank

    def monitor(self, category: str) -> DriftMonitor:
        """The drift monitor of a calibrated category (``inctrl_runtime.drift_store``): whether
        its scored parts still look like its calibration's normals. Refused in one line for a
        category that is not calibrated."""
        self.bundle.prior(category)
        return DriftMonitor(self.bundle.path, category, self.registered(category))

    def registered(self, category: str) -> NumpyBank:
        """The bank saved by ``register`` for a category, read from disk once (again only when
        the digest its file records changes, e.g. registered anew by another process)."""
        return self.banks.bank(category)

    # ---------------------------------------------------------------------------------- scoring
    def score_arrays(
        self,
        category: str,
        images: Images,
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        progress: ProgressUpdate | None = None,
    ) -> Scores:
        """Every head output for the queries, in order, batch by batch.

        ``images`` are image sources (a single one is a list of one) or already preprocessed
        B x 3 x S x S pixels; ``bank`` defaults to the category's registered one; ``progress``
        is called with the number of queries done after each batch.
        """
        prepared = self._prepare(category, images, bank, batch_size)
        chunks = [
            self.frame_scores(prepared.bank, batch.features, prepared.head_inputs)[0]
            for batch in self._batches(prepared, progress)
        ]
        return Scores(*(np.concatenate(field) for field in zip(*chunks, strict=True)))

    def results(
        self,
        category: str,
        images: ImageSource | Sequence[ImageSource],
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        progress: ProgressUpdate | None = None,
        fpr: float = DEFAULT_FPR,
        region_fpr: float | None = None,
        heatmap_size: int | None = DEFAULT_HEATMAP_SIZE,
        monitor: bool = False,
        drift_delta: float = DEFAULT_DELTA,
    ) -> list[Result]:
        """Score query images of a category (a single one is a list of one): one Result per
        image, with ``heatmap()`` (drawn on a picture of the whole frame, kept when the image
        was decoded for scoring, its longer side at most ``heatmap_size``; None keeps none)
        and, when the category is calibrated and scored against its registered bank, its
        p-value and its decision at false-positive rate ``fpr``, and its regions at
        ``region_fpr`` (None: ``fpr``). With ``monitor``, each image is also a part of the
        category's drift monitor, in order (``Result.drift``; an alarm at ``drift_delta``)."""
        scored: list[Result] = []
        batches = self.result_batches(
            category, images, bank, batch_size, fpr, region_fpr, heatmap_size, monitor,
            drift_delta,
        )  # fmt: skip
        for batch in batches:
            scored.extend(batch)
            if progress is not None:
                progress(len(scored))
        return scored

    def result_batches(
        self,
        category: str,
        images: ImageSource | Sequence[ImageSource],
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        fpr: float = DEFAULT_FPR,
        region_fpr: float | None = None,
        heatmap_size: int | None = DEFAULT_HEATMAP_SIZE,
        monitor: bool = False,
        drift_delta: float = DEFAULT_DELTA,
    ) -> Iterator[list[Result]]:
        """``results``, one batch at a time: everything is checked before this returns, then
        images are decoded batch by batch, so memory stays flat in the number of images if the
        caller lets each batch go."""
        check_heatmap_size(heatmap_size)
        prepared = self._prepare(category, images, bank, batch_size, fpr, region_fpr=region_fpr)
        if monitor:
            if bank is not None:
                raise InputError(
                    "the drift monitor watches a category's registered, calibrated bank: score "
                    "without --shot images to monitor"
                )
            calibration = prepared.bank.calibration
            if calibration is not None and calibration.other_precision(self.precision):
                # its parts' scores would be ranked against another model's
                raise InputError(f"--monitor: {calibration.other_precision(self.precision)}")
            watching = DriftMonitor(self.bundle.path, category, prepared.bank)
            prepared = replace(prepared, monitor=watching, drift_delta=check_delta(drift_delta))
        return self._result_batches(prepared, heatmap_size)

    def _result_batches(
        self, prepared: Prepared, heatmap_size: int | None
    ) -> Iterator[list[Result]]:
        preprocessing = self.bundle.preprocessing
        for batch in self._batches(prepared, picture_size=heatmap_size):
            scores, decisive = self.frame_scores(prepared.bank, batch.features,
                                                 prepared.head_inputs)  # fmt: skip
            decisions = None
            if prepared.calibration is not None:
                decisions = decision_fields(prepared.calibration, scores.score, prepared.fpr)
            drifts = None
            if prepared.monitor is not None:
                flagged = None if decisions is None else [bool(d["anomalous"]) for d in decisions]
                drifts = prepared.monitor.take(scores.score, prepared.drift_delta, flagged)
            decoded = batch.decoded
            yield to_results(
                batch.names,
                scores,
                preprocessing,
                decisions,
                prepared.regions,
                frames=None if decoded is None else [image.frame for image in decoded],
                pictures=None if decoded is None else [image.picture for image in decoded],
                layouts=None if decisive is None else [image.layout for image in decoded],
                decisive=decisive,
                drifts=drifts,
            )

    def calibrate(
        self,
        category: str,
        normal_images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        progress: ProgressUpdate | None = None,
    ) -> Calibration:
        """Score n normal images that are not the category's prompts against its registered
        bank and keep their sorted scores with the bank (``references/<category>.npz``,
        atomically): its queries then get p-values and decisions. Returns the calibration."""
        prepared = self._prepare(category, normal_images, None, batch_size, what="no normal "
                                 "images to calibrate with")  # fmt: skip
        prompts = set(prepared.bank.digests)
        digests: list[str] = []
        chunks, maxima = [], []
        for batch in self._batches(prepared, progress):
            for name, pixels in zip(batch.names, batch.frame_pixels, strict=True):
                digests.append(pixel_digest(pixels))
                if digests[-1] in prompts:  # it would score near 0 and bias the rate
                    raise InputError(
                        f"{name}: is one of the prompt images of {category!r}; calibrate on "
                        "normal images that are not prompts"
                    )
            scores, _ = self.frame_scores(prepared.bank, batch.features, prepared.head_inputs)
            chunks.append(scores.score)
            maxima.append(scores.max_patch_residual)
        bank = prepared.bank
        calibration = Calibration.of(
            np.concatenate(chunks),
            digests,
            self.backend,
            self.precision,
            bank.encoder_sha256,
            map_maxima=np.concatenate(maxima),
        )
        path = self.bundle.reference_path(category)
        if read_digest(path) != bank.digest:
            raise InputError(
                f"{path}: registered anew while calibrating; calibrate {category} again"
            )
        self.banks.save(bank.calibrated(calibration))
        return calibration

    # ------------------------------------------------------------------ checks and the loop
    def _prepare(
        self,
        category: str,
        images: ImageSource | Images,
        bank: NumpyBank | None,
        batch_size: int = 16,
        fpr: float | None = None,
        what: str | None = "no query images given",
        region_fpr: float | None = None,
    ) -> Prepared:
        """Check a call's inputs, each once, before any image is read: the batch size, the
        rates (``fpr``; None: the call makes no decisions; ``region_fpr``, None: ``fpr``), the
        images, the category's prior, the bank (its registered one unless ``bank`` is given,
        which then must fit the bundle) and the calibration to decide with (the registered
        bank's, warned where it does not quite fit) and its region rule."""
        if fpr is not None:
            check_fpr(fpr)
            region_fpr = fpr if region_fpr is None else check_fpr(region_fpr, "--region-fpr")
        found = checked_images(images, batch_size, what)
        prior = self.bundle.prior(category)
        calibration = None
        if bank is None:
            bank = self.registered(category)
            calibration = self._usable(bank.calibration, fpr, region_fpr)
        else:
            check_fits(self.bundle, bank, f"the reference bank ({', '.join(bank.sources[:2])})")
        check_tiled_sources(found, bank.tiling, f"the bank of {category!r}")
        head_inputs = [self.head_engine.upload(feeds) for feeds in head_feeds(bank, prior)]
        regions = None if calibration is None else region_rule(calibration, region_fpr)
        return Prepared(
            found, batch_size, bank, head_inputs, calibration, fpr or DEFAULT_FPR, regions
        )

    def _batches(
        self,
        prepared: Prepared,
        progress: ProgressUpdate | None = None,
        picture_size: int | None = None,
    ) -> Iterator[EncodedBatch]:
        """``encoded_batches`` of a prepared call's images, features on the device, tiled and
        grouped as its bank is (each frame refused, in one line, unless it has the bank's
        size)."""
        bank = prepared.bank
        return self.encoded_batches(
            prepared.images, prepared.batch_size, True, progress, picture_size,
            bank.frame_tiling, bank.groups if len(bank.groups) > 1 else None,
        )  # fmt: skip

    def encoded_batches(
        self,
        images: Images,
        batch_size: int,
        on_device: bool = False,
        progress: ProgressUpdate | None = None,
        picture_size: int | None = None,
        tiling: Tiling | FrameTiling | None = None,
        groups: Sequence[Sequence[int]] | None = None,
    ) -> Iterator[EncodedBatch]:
        """The one batch loop (``batches.encoded_batches``) with this bundle's preprocessing
        and encoder."""
        return encoded_batches(
            self.encode, self.bundle.preprocessing, images, batch_size, on_device, progress,
            picture_size, tiling, groups,
        )  # fmt: skip

    def _usable(
        self, calibration: Calibration | None, fpr: float | None, region_fpr: float | None
    ) -> Calibration | None:
        """The calibration to decide with (None for a call that makes no decisions, and, with a
        warning, for one made at another precision than the encoder's), warned about where it
        does not quite fit (``Calibration.misfits``)."""
        if calibration is None or fpr is None:
            return None
        other = calibration.other_precision(self.precision)
        if other:
            warnings.warn(other, CalibrationWarning, stacklevel=4)
            return None
        for misfit in calibration.misfits(self.backend, self.precision, fpr, region_fpr):
            warnings.warn(misfit, CalibrationWarning, stacklevel=4)
        return calibration

    def __repr__(self) -> str:
        return (
            f"Detector({str(Path(self.bundle.path))!r}, device={self.device!r}, "
            f"categories={list(self.categories)})"
        )
