"""The head of a served bundle: every registered category's bank, and the head graph run once
per category over the rows of a batch that name it, with the category's decisions.

Banks are read when a request first names a category and read again when their file's digest
changes (``read_digest``), so ``inctrl-run register`` or ``calibrate`` on the bundle while the
server runs is served from the next request on, without a restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import Calibration
from inctrl_runtime.detector import load_registered
from inctrl_runtime.engines import Engine
from inctrl_runtime.engines.plans import read_builds
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.references import read_digest
from inctrl_runtime.results import SCORE_FIELDS
from inctrl_runtime.triton.names import CATEGORY, ENCODER, ENCODER_FILES, OUTPUTS, VERSION
from inctrl_runtime.triton.stages import Answer, Feeds, ModelArgs, concatenate, open_graph, texts


@dataclass(frozen=True)
class CategoryState:
    """A category as the head holds it: its bank file's digest, the head's few-shot inputs
    (bank and text prior) and its calibration (None: uncalibrated)."""

    digest: str
    inputs: dict[str, np.ndarray]
    calibration: Calibration | None


def decision_arrays(
    calibration: Calibration | None, scores: np.ndarray, fpr: float
) -> dict[str, np.ndarray]:
    """p_value, threshold and anomalous for B scores as the entry point returns them: NaN,
    NaN and false where the runtime's record says None (uncalibrated; threshold and anomalous
    too when the calibration is too small for ``fpr``)."""
    count = len(scores)
    arrays = {
        "p_value": np.full(count, np.nan, np.float32),
        "threshold": np.full(count, np.nan, np.float32),
        "anomalous": np.zeros(count, bool),
    }
    if calibration is not None:
        decisions = calibration.decide(scores, fpr)
        arrays["p_value"][:] = decisions.p_value
        if decisions.anomalous is not None:
            arrays["threshold"][:] = decisions.threshold
            arrays["anomalous"][:] = decisions.anomalous
    return arrays


def check_encoder_file(root: Path, bundle: Bundle) -> None:
    """Refuse a repository whose encoder model file (``model.onnx`` / ``model.plan``, the
    models Triton loads itself) is not the bundle's: its sha256 must be the manifest's record
    of the encoder graph, or of an encoder plan of one of its TensorRT builds."""
    for encoder, name in ENCODER_FILES.items():
        file = root / ENCODER / VERSION / name
        if not file.is_file():
            continue
        if encoder == "onnxruntime":
            recorded = {bundle.encoder_sha256}
        else:
            builds = read_builds(bundle.manifest, bundle.path).values()
            recorded = {b.plans["encoder"].sha256 for b in builds if "encoder" in b.plans}
        if file_sha256(file) not in recorded:
            raise BundleError(
                f"{file}: its sha256 is not the bundle manifest's for the encoder "
                f"({bundle.path}); write the repository again with inctrl-export triton"
            )


class HeadStage:
    """Scores each row of a batch against its category's bank (python model ``inctrl_head``)."""

    def __init__(
        self, bundle: Bundle, engine: Engine, fpr: float, categories: Sequence[str] = ()
    ) -> None:
        self.bundle = bundle
        self.engine = engine
        self.fpr = fpr
        self.features = tuple(spec.name for spec in bundle.graphs["encoder"].outputs)
        self.inputs = (*self.features, CATEGORY)
        self._held: dict[str, CategoryState] = {}
        for category in categories:
            self.state(category)  # a category asked for at load must be there

    @classmethod
    def open(cls, args: Mapping[str, str]) -> HeadStage:
        parsed = ModelArgs.parse(args)
        bundle = parsed.bundle()
        check_encoder_file(parsed.root, bundle)
        engine = open_graph(bundle, "head", parsed.threads)
        return cls(bundle, engine, parsed.fpr, parsed.categories)

    def state(self, category: str) -> CategoryState:
        """A category's bank and prior, read again when its file changed on disk."""
        prior = self.bundle.prior(category)  # an unknown category: one line naming it
        path = self.bundle.reference_path(category)
        if not path.is_file():
            raise InputError(
                f"category {category!r} is not registered in {self.bundle.path}: run inctrl-run "
                f"register {self.bundle.path} --category {category} --shot IMG ... (the "
                "running server serves it from then on)"
            )
        held = self._held.get(category)
        if held is None or read_digest(path) != held.digest:
            bank = load_registered(self.bundle, category)
            inputs = {
                "ref_patches": bank.patches,
                "ref_adapted": bank.adapted_mean,
                "text_prior": prior,
            }
            held = CategoryState(bank.digest, inputs, bank.calibration)
            self._held[category] = held
        return held

    def scores(self, features: Feeds, state: CategoryState) -> dict[str, np.ndarray]:
        """Every entry output for B rows of one category, as B x 1 (the patch map B x P)."""
        outputs = self.engine.run({**features, **state.inputs})
        arrays = {name: outputs[name] for name in SCORE_FIELDS}
        arrays |= decision_arrays(state.calibration, arrays["score"], self.fpr)
        return {name: a if a.ndim == 2 else a.reshape(-1, 1) for name, a in arrays.items()}

    def run(self, requests: Sequence[Feeds]) -> list[Answer]:
        """Requests that name an unknown or unregistered category are refused; the others'
        rows are grouped by category, each group scored in one run of the head."""
        answers: list[Answer | None] = [None] * len(requests)
        named: dict[int, list[str]] = {}
        states: dict[str, CategoryState] = {}  # read once per batch
        for index, request in enumerate(requests):
            try:
                named[index] = texts(request[CATEGORY], "category")
                for category in set(named[index]) - set(states):
                    states[category] = self.state(category)
            except InputError as err:
                answers[index] = err
        good = [i for i in range(len(requests)) if answers[i] is None]
        if not good:
            return answers  # type: ignore[return-value]
        features, rows = concatenate([requests[i] for i in good], self.features)
        categories = np.array([c for i in good for c in named[i]])
        joined: dict[str, np.ndarray] = {}
        for category in dict.fromkeys(categories.tolist()):
            where = np.flatnonzero(categories == category)
            scored = self.scores({n: a[where] for n, a in features.items()}, states[category])
            for name, array in scored.items():
                if name not in joined:
                    joined[name] = np.empty((len(categories), *array.shape[1:]), array.dtype)
                joined[name][where] = array
        for index, part in zip(good, rows, strict=True):
            answers[index] = {name: joined[name][part] for name in OUTPUTS}
        return answers  # type: ignore[return-value]

    def close(self) -> None:
        self.engine.close()
