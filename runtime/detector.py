"""The lean scorer: a checked bundle, an encoder and a head engine, and the few-shot state.

    det = Detector.open("bundle/", device="cpu")
    det.register("candle", ["good_1.png", "good_2.png"])      # references/candle.npz
    for result in det.score("candle", ["a.png", "b.png"]):
        print(result.score); result.heatmap().save("a_map.png")

A query costs one encoder pass and the head; the encoder's outputs feed the head as they are
(numpy arrays on the CPU, device buffers on a GPU). Which backend runs the graphs is the engines'
business (``inctrl_runtime.engines``): nothing here calls a backend's API.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import DEFAULT_FPR, Calibration, check_fpr
from inctrl_runtime.engines import Engine, VerificationWarning, open_engines
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import stack_prompts
from inctrl_runtime.preprocess import (
    ImageSource,
    describe,
    image_sequence,
    model_views,
    pixel_digest,
    preprocess_many,
)
from inctrl_runtime.references import NumpyBank, read_digest
from inctrl_runtime.results import Result, Scores, results
from inctrl_runtime.selection import (
    SELECTIONS,
    Selection,
    coverage_selection,
    mean_residual,
    random_draw,
)

Features = dict[str, Any]  # numpy arrays, or the encoder engine's device values


class CalibrationWarning(UserWarning):
    """Decisions are made with a calibration that does not quite fit the call."""


class Detector:
    """Scores images of a category against its registered normal examples, with no torch."""

    def __init__(self, bundle: Bundle, encoder_engine: Engine, head_engine: Engine) -> None:
        self.bundle = bundle
        self.encoder_engine = encoder_engine
        self.head_engine = head_engine
        # Registered banks read from disk, with the digest their file recorded.
        self._registered: dict[str, tuple[str, NumpyBank]] = {}

    @classmethod
    def open(
        cls,
        bundle: str | os.PathLike,
        device: str = "cpu",
        threads: int | None = None,
        strict: bool = True,
        check_files: bool = True,
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
        """
        checked = Bundle.open(bundle, check_files=check_files)
        verification = checked.manifest.get("verification") or {}
        if verification and not verification.get("passed", False):
            warnings.warn(
                f"{checked.path}: this bundle failed its export check against PyTorch "
                f"(max abs diff {verification.get('max_abs_diff')}); see its manifest",
                VerificationWarning,
                stacklevel=2,
            )
        engines = open_engines(checked, device, threads, strict)
        return cls(checked, engines["encoder"], engines["head"])

    @property
    def device(self) -> str:
        """Where the engines run: ``cpu``, ``cuda``, ``ort-tensorrt`` or ``tensorrt`` (the CPU
        after a fallback)."""
        return self.encoder_engine.device

    def close(self) -> None:
        """Release both engines."""
        self.encoder_engine.close()
        self.head_engine.close()

    @property
    def categories(self) -> tuple[str, ...]:
        """Categories this bundle has text priors for."""
        return self.bundle.categories

    # ------------------------------------------------------------------------------- features
    def pixels(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """B x 3 x S x S float32, preprocessed as the manifest says."""
        return preprocess_many(images, self.bundle.preprocessing)

    def encode(self, pixels: np.ndarray, on_device: bool = False) -> Features:
        """The encoder's outputs (embedding, adapted, patches) for preprocessed images.

        ``on_device`` keeps them in GPU memory when the encoder runs on a GPU.
        """
        return self.encoder_engine.run({"image": pixels}, keep_on_device=on_device)

    # ------------------------------------------------------------------------- few-shot state
    def reference(
        self, prompt_images: ImageSource | Sequence[ImageSource], batch_size: int = 16
    ) -> NumpyBank:
        """Encode k normal prompt images (a single one is a list of one) into a NumpyBank (not
        saved)."""
        prompt_images = image_sequence(prompt_images)
        if len(prompt_images) == 0:
            raise InputError("no prompt images: give at least one normal image of the category")
        _check_batch_size(batch_size)
        pixels = self.pixels(prompt_images)
        starts = range(0, len(pixels), batch_size)
        chunks = [self.encode(pixels[i : i + batch_size]) for i in starts]
        patches = np.concatenate([c["patches"] for c in chunks])  # k x L x P x D
        adapted = np.concatenate([c["adapted"] for c in chunks])
        return NumpyBank(
            patches=np.ascontiguousarray(stack_prompts(patches)),
            adapted_mean=adapted.mean(axis=0, dtype=np.float32),
            shots=len(patches),
            sources=tuple(describe(s) for s in prompt_images),
            digests=tuple(pixel_digest(p) for p in pixels),
            encoder_sha256=self.bundle.encoder_sha256,
        )

    def register(
        self,
        category: str,
        prompt_images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        selection: dict | None = None,
    ) -> NumpyBank:
        """Build a category's bank and save it as ``references/<category>.npz`` (atomically);
        ``selection`` records how the prompts were chosen from a pool (``NumpyBank``)."""
        self.bundle.prior(category)  # an unknown category fails before any work
        path = self.bundle.reference_path(category)
        bank = self.reference(prompt_images, batch_size)
        bank = replace(bank, category=category, selection=selection)
        bank.save(path)
        self._registered[category] = (bank.digest, bank)
        return bank

    def select(
        self,
        pool: ImageSource | Sequence[ImageSource],
        shots: int,
        method: str = "coverage",
        seed: int = 0,
        category: str = "",
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> Selection:
        """Choose k = ``shots`` prompts from a pool of normal images (``inctrl_runtime.
        selection``): ``coverage`` covers the pool's patch tokens best; ``random`` is the seeded
        draw of ``inctrl evaluate`` for (seed, category), from the pool sorted by name (a path's
        text). The pool is encoded batch by batch (``progress`` gets the number done); its patch
        tokens are held once (n x L x P x D float32). Returns indices into the pool and the
        pool's mean patch residual with those prompts; ``register`` the chosen images."""
        images = image_sequence(pool)
        _check_batch_size(batch_size)
        if method not in SELECTIONS:
            raise InputError(f"unknown selection {method!r}: choose {' or '.join(SELECTIONS)}")
        if not 0 < shots <= len(images):
            raise InputError(f"cannot select {shots} prompts from {len(images)} images")
        chunks = []
        for start in range(0, len(images), batch_size):
            chunks.append(self.encode(self.pixels(images[start : start + batch_size]))["patches"])
            if progress is not None:
                progress(min(start + batch_size, len(images)))
        patches = np.concatenate(chunks)
        if method == "coverage":
            return coverage_selection(patches, shots)
        names = [describe(source) for source in images]
        drawn = random_draw(range(len(images)), shots, seed, category, key=names.__getitem__)
        return Selection(tuple(drawn), mean_residual(patches, drawn))

    def registered(self, category: str) -> NumpyBank:
        """The bank saved by ``register`` for a category, read from disk once (again only when
        the digest its file records changes, e.g. registered anew by another process)."""
        path = self.bundle.reference_path(category)
        if not path.is_file():
            raise InputError(
                f"category {category!r} is not registered in {self.bundle.path}: run "
                f"inctrl-run register {self.bundle.path} --category {category} --shot IMG ..."
            )
        digest, bank = self._registered.get(category, (None, None))
        if digest is None or read_digest(path) != digest:
            bank = load_registered(self.bundle, category)
            self._registered[category] = (bank.digest, bank)
        return bank

    # ---------------------------------------------------------------------------------- scoring
    def head(self, features: Features, bank_inputs: dict) -> Scores:
        """The residual head on encoded queries and a category's bank and prior inputs."""
        inputs = {name: features[name] for name in ("embedding", "adapted", "patches")}
        outputs = self.head_engine.run({**inputs, **bank_inputs})
        return Scores(**{name: outputs[name] for name in Scores._fields})

    def score_arrays(
        self,
        category: str,
        images: ImageSource | Sequence[ImageSource],
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> Scores:
        """Every head output for the queries, in order, batch by batch.

        ``images`` are image sources (a single one is a list of one) or already preprocessed
        B x 3 x S x S pixels; ``bank`` defaults to the category's registered one; ``progress``
        is called with the number of queries done after each batch.
        """
        images = image_sequence(images)
        _check_batch_size(batch_size)
        if len(images) == 0:
            raise InputError("no query images given")
        bank_inputs = self.bank_inputs(category, bank)
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = batch if isinstance(batch, np.ndarray) else self.pixels(batch)
            chunks.append(self.head(self.encode(pixels, on_device=True), bank_inputs))
            if progress is not None:
                progress(start + len(batch))
        return Scores(*(np.concatenate(field) for field in zip(*chunks, strict=True)))

    def bank_inputs(self, category: str, bank: NumpyBank | None = None) -> dict:
        """The head's few-shot inputs for a category (its registered bank unless ``bank`` is
        given), uploaded once to the GPU when the head runs there; pass them to ``head``."""
        prior = self.bundle.prior(category)
        if bank is None:
            bank = self.registered(category)
        else:
            _check_bank(self.bundle, bank, f"the reference bank ({', '.join(bank.sources[:2])})")
        arrays = {
            "ref_patches": bank.patches,
            "ref_adapted": bank.adapted_mean,
            "text_prior": prior,
        }
        return self.head_engine.upload(arrays)

    def score(
        self,
        category: str,
        images: ImageSource | Sequence[ImageSource],
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
        fpr: float = DEFAULT_FPR,
    ) -> list[Result]:
        """Score query images of a category (a single one is a list of one): one Result per
        image, with ``heatmap()`` (drawn on the picture decoded here for scoring) and, when the
        category is calibrated and scored against its registered bank, its p-value and its
        decision at false-positive rate ``fpr``."""
        scored: list[Result] = []
        for batch in self.score_batches(category, images, bank, batch_size, fpr):
            scored.extend(batch)
            if progress is not None:
                progress(len(scored))
        return scored

    def score_batches(
        self,
        category: str,
        images: ImageSource | Sequence[ImageSource],
        bank: NumpyBank | None = None,
        batch_size: int = 16,
        fpr: float = DEFAULT_FPR,
    ) -> Iterator[list[Result]]:
        """``score``, one batch of Results at a time: images are decoded batch by batch, so
        memory stays flat in the number of images if the caller lets each batch go."""
        images = image_sequence(images)
        _check_batch_size(batch_size)
        check_fpr(fpr)
        if len(images) == 0:
            raise InputError("no query images given")
        registered = bank is None
        bank = self.registered(category) if registered else bank
        bank_inputs = self.bank_inputs(category, bank)
        calibration = self._usable(bank.calibration, fpr) if registered else None
        preprocessing = self.bundle.preprocessing
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            views = model_views(batch, preprocessing)
            scores = self.head(self.encode(self.pixels(views), on_device=True), bank_inputs)
            decisions = calibration.decide(scores.score, fpr) if calibration else None
            yield results(batch, scores, preprocessing, views, decisions)

    # ------------------------------------------------------------------------------ decisions
    @property
    def backend(self) -> str:
        """What scores: e.g. ``onnxruntime-cpu`` (recorded with a calibration)."""
        return self.encoder_engine.backend

    @property
    def precision(self) -> str:
        """The encoder's precision (recorded with a calibration)."""
        return self.bundle.graphs["encoder"].precision

    def calibrate(
        self,
        category: str,
        normal_images: ImageSource | Sequence[ImageSource],
        batch_size: int = 16,
        progress: Callable[[int], None] | None = None,
    ) -> Calibration:
        """Score n normal images that are not the category's prompts against its registered
        bank and keep their sorted scores with the bank (``references/<category>.npz``,
        atomically): its queries then get p-values and decisions. Returns the calibration."""
        images = image_sequence(normal_images)
        _check_batch_size(batch_size)
        if len(images) == 0:
            raise InputError("no normal images to calibrate with")
        bank = self.registered(category)
        bank_inputs = self.bank_inputs(category, bank)
        prompts = set(bank.digests)
        digests: list[str] = []
        chunks = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            pixels = self.pixels(batch)
            for source, pixel in zip(batch, pixels, strict=True):
                digests.append(pixel_digest(pixel))
                if digests[-1] in prompts:  # it would score near 0 and bias the rate
                    raise InputError(
                        f"{describe(source)}: is one of the prompt images of {category!r}; "
                        "calibrate on normal images that are not prompts"
                    )
            chunks.append(self.head(self.encode(pixels, on_device=True), bank_inputs).score)
            if progress is not None:
                progress(len(digests))
        calibration = Calibration.of(
            np.concatenate(chunks), digests, self.backend, self.precision, bank.encoder_sha256
        )
        path = self.bundle.reference_path(category)
        if read_digest(path) != bank.digest:
            raise InputError(
                f"{path}: registered anew while calibrating; calibrate {category} again"
            )
        calibrated = replace(bank, calibration=calibration)
        calibrated.save(path)
        self._registered[category] = (calibrated.digest, calibrated)
        return calibration

    def _usable(self, calibration: Calibration | None, fpr: float) -> Calibration | None:
        """The calibration to decide with, warning when it was made by another backend or
        precision, or is too small for ``fpr`` (p-values are still given)."""
        if calibration is None:
            return None
        if (calibration.backend, calibration.precision) != (self.backend, self.precision):
            warnings.warn(
                f"the calibration was scored with {calibration.backend} {calibration.precision}, "
                f"this is {self.backend} {self.precision}: scores may differ slightly, so may "
                "the false-positive rate; calibrate again on this backend to be exact",
                CalibrationWarning,
                stacklevel=3,
            )
        too_small = calibration.too_small_for(fpr)
        if too_small:
            warnings.warn(too_small, CalibrationWarning, stacklevel=3)
        return calibration

    def __repr__(self) -> str:
        return (
            f"Detector({str(Path(self.bundle.path))!r}, device={self.device!r}, "
            f"categories={list(self.categories)})"
        )


def load_registered(bundle: Bundle, category: str) -> NumpyBank:
    """A category's bank file (``references/<category>.npz``, which must exist) read and
    checked: whole, registered for this category, by this bundle's encoder, of its shapes."""
    path = bundle.reference_path(category)
    bank = NumpyBank.load(path)
    if bank.category != category:
        raise InputError(
            f"{path}: holds the bank registered for category {bank.category!r}, not "
            f"{category!r} (a copied file?); register {category} with inctrl-run register"
        )
    _check_bank(bundle, bank, str(path))
    return bank


def _check_bank(bundle: Bundle, bank: NumpyBank, where: str) -> None:
    bank.check(bundle.bank_shape, bundle.encoder_sha256, "the bundle's model", where)


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"batch size must be a whole number of at least 1, got {batch_size!r}")
