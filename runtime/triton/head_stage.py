"""The head of a served bundle: every registered category's bank, and the head graph run once
per category over the rows of a batch that name it, with the category's decisions and regions.

Banks are the runtime's registered banks (``inctrl_runtime.references.RegisteredBanks``): read
when a request first names a category and read again when their file's digest changes, so
``inctrl-run register`` or ``calibrate`` on the bundle while the server runs is served from the
next request on, without a restart.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from inctrl_runtime.bundle import PRIORS, Bundle
from inctrl_runtime.decisions import decision_arrays
from inctrl_runtime.engines import Engine
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.references import NumpyBank, RegisteredBanks, head_feeds
from inctrl_runtime.regions import region_rule
from inctrl_runtime.results import SCORE_FIELDS
from inctrl_runtime.triton.names import (
    CATEGORY,
    ENCODER,
    ENCODER_FILES,
    FRAME_SIZE,
    HEAD_OUTPUTS,
    VERSION,
)
from inctrl_runtime.triton.region_codec import region_arrays
from inctrl_runtime.triton.stages import Feeds, ModelArgs, Reply, concatenate, open_graph, texts

# How a request for an unregistered category is answered: how to register it, and that the
# running server then serves it.
_THEN_SERVED = " (the running server serves it from then on)"


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
            builds = bundle.builds.values()
            recorded = {b.plans["encoder"].sha256 for b in builds if "encoder" in b.plans}
        if file_sha256(file) not in recorded:
            raise BundleError(
                f"{file}: its sha256 is not the bundle manifest's for the encoder "
                f"({bundle.path}); write the repository again with inctrl-export triton"
            )


def check_served_whole(bank: NumpyBank, category: str, then: str = "") -> None:
    """Refuse, in one line, a tiled category: the served path scores a frame whole (its entry
    model cannot yet cut a frame into tiles), and a tiled bank scored so would be wrong;
    ``then`` ends the line."""
    if bank.tiling is not None:
        raise InputError(
            f"category {category!r} is registered with {bank.tiling} tiles, which a Triton "
            "repository does not serve yet; score it with inctrl-run score, or register it "
            f"without --tiles to serve it{then}"
        )


class HeadStage:
    """Scores each row of a batch against its category's bank (python model ``inctrl_head``):
    decisions at rate ``fpr``, regions at ``region_fpr`` (None: ``fpr``)."""

    def __init__(
        self,
        bundle: Bundle,
        engine: Engine,
        fpr: float,
        categories: Sequence[str] = (),
        region_fpr: float | None = None,
    ) -> None:
        self.bundle = bundle
        self.engine = engine
        self.fpr = fpr
        self.region_fpr = fpr if region_fpr is None else region_fpr
        self.features = tuple(spec.name for spec in bundle.graphs["encoder"].outputs)
        self.inputs = (*self.features, FRAME_SIZE, CATEGORY)
        self.banks = RegisteredBanks(bundle)
        for category in categories:  # read ahead; a damaged bank fails alone when asked for
            with contextlib.suppress(InputError):
                self.bank(category)

    @classmethod
    def open(cls, args: Mapping[str, str]) -> HeadStage:
        parsed = ModelArgs.parse(args)
        bundle = parsed.bundle(reads=lambda bundle: [bundle.graphs["head"].file.name, PRIORS])
        check_encoder_file(parsed.root, bundle)
        engine = open_graph(bundle, "head", parsed.threads)
        return cls(bundle, engine, parsed.fpr, parsed.categories, parsed.region_fpr)

    def bank(self, category: str) -> NumpyBank:
        """A category's registered bank, read again when its file changed on disk; an unknown
        or unregistered category is a one-line error naming it."""
        self.bundle.prior(category)
        bank = self.banks.bank(category, then=_THEN_SERVED)
        check_served_whole(bank, category)
        return bank

    def outputs(
        self, features: Feeds, frames: np.ndarray, category: str, bank: NumpyBank
    ) -> dict[str, np.ndarray]:
        """The head's outputs for B rows of one category (their features, and their frames'
        sizes, B x 2), as B x 1 (the patch map B x P)."""
        feeds = head_feeds(bank, self.bundle.prior(category))
        found = self.engine.run({**features, **feeds})
        arrays = {name: found[name] for name in SCORE_FIELDS}
        calibration = bank.calibration
        arrays |= decision_arrays(calibration, arrays["score"], self.fpr)
        rule = None if calibration is None else region_rule(calibration, self.region_fpr)
        size = self.bundle.preprocessing.size
        arrays |= region_arrays(rule, arrays["patch_residual_map"], frames, size)
        return {name: a if a.ndim == 2 else a.reshape(-1, 1) for name, a in arrays.items()}

    def run(self, requests: Sequence[Feeds]) -> list[Reply]:
        """Requests that name an unknown or unregistered category are refused; the others'
        rows are grouped by category, each group scored in one run of the head."""
        replies: list[Reply | None] = [None] * len(requests)
        named: dict[int, list[str]] = {}
        banks: dict[str, NumpyBank] = {}  # read once per batch
        for index, request in enumerate(requests):
            try:
                named[index] = texts(request[CATEGORY], "category")
                for category in set(named[index]) - set(banks):
                    banks[category] = self.bank(category)
            except InputError as err:
                replies[index] = err
        good = [i for i in range(len(requests)) if replies[i] is None]
        if not good:
            return replies  # type: ignore[return-value]
        features, rows = concatenate([requests[i] for i in good], self.features)
        frames = np.concatenate([requests[i][FRAME_SIZE] for i in good])
        categories = np.array([c for i in good for c in named[i]])
        joined: dict[str, np.ndarray] = {}
        for category in dict.fromkeys(categories.tolist()):
            where = np.flatnonzero(categories == category)
            part = {name: array[where] for name, array in features.items()}
            found = self.outputs(part, frames[where], category, banks[category])
            for name, array in found.items():
                if name not in joined:
                    joined[name] = np.empty((len(categories), *array.shape[1:]), array.dtype)
                joined[name][where] = array
        for index, part in zip(good, rows, strict=True):
            replies[index] = {name: joined[name][part] for name in HEAD_OUTPUTS}
        return replies  # type: ignore[return-value]

    def close(self) -> None:
        self.engine.close()
