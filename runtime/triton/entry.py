"""The entry model of a served bundle: image files and categories in, the records' fields out.

One python model (``inctrl``) does for a batch of requests what ``inctrl-run score`` does for a
batch of images: each file decoded once and cut as its category's bank says (its centred crop,
or a tiled bank's tiles: ``inctrl_runtime.tiling``), every view of every request encoded together
by the shared encoder model (called through Triton's business-logic scripting, BLS, so that its
dynamic batcher merges the calls of every entry instance: an ensemble cannot do this, since it
keeps one batch size through its steps and a frame becomes T tiles), then per category one run
of the head graph, the tiles reduced to their frames (``results.frame_scores``), the decisions
and the regions. Requests that fail (an unreadable file, an unknown category, a frame of another
size than a tiled bank's) are refused alone.

Banks are the runtime's registered banks (``inctrl_runtime.references.RegisteredBanks``): read
when a request first names a category and read again when their file's digest changes, so
``inctrl-run register`` or ``calibrate`` on the bundle while the server runs is served from the
next request on, without a restart.

Every calibrated category's frames are parts of its drift monitor (``inctrl_runtime.drift_store``,
in the bundle the entry reads, shared with every other instance and process under its lock);
after each batch the entry publishes the monitor's evidence, its alarm and the share of parts
flagged (``Gauges``: on Triton's metrics endpoint).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inctrl_runtime.bundle import PRIORS, Bundle
from inctrl_runtime.decisions import ANOMALOUS, CalibrationWarning, decision_arrays
from inctrl_runtime.drift import DEFAULT_DELTA
from inctrl_runtime.drift_store import DriftMonitor
from inctrl_runtime.engines import Engine
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.preprocess import DecodedImage, decode
from inctrl_runtime.references import NumpyBank, RegisteredBanks, head_feeds
from inctrl_runtime.regions import Framing, region_rule
from inctrl_runtime.results import SCORE_FIELDS, Scores, frame_scores, view_scores
from inctrl_runtime.triton.names import (
    CATEGORY,
    ENCODER,
    ENCODER_FILES,
    IMAGE,
    OUTPUTS,
    VERSION,
    WATCHED,
)
from inctrl_runtime.triton.stages import Feeds, ModelArgs, Reply, open_graph, texts
from inctrl_runtime.triton.wire import where_arrays

# Runs the encoder: N x 3 x S x S pixels -> its outputs, N rows each.
Encode = Callable[[np.ndarray], Feeds]
# Publishes a category's drift gauges: (category, evidence, alarm, share of parts flagged).
Gauges = Callable[[str, float, bool, float], None]
# How a request for an unregistered category is answered: how to register it, and that the
# running server then serves it.
_THEN_SERVED = " (the running server serves it from then on)"


def check_encoder_file(root: Path, bundle: Bundle) -> str:
    """Refuse a repository whose encoder model file (``model.onnx`` / ``model.plan``, the
    models Triton loads itself) is not the bundle's: its sha256 must be the manifest's record
    of the encoder graph, or of an encoder plan of one of its TensorRT builds. Returns the
    served encoder's precision (the bundle's encoder graph's where Triton loads no file)."""
    for encoder, name in ENCODER_FILES.items():
        file = root / ENCODER / VERSION / name
        if not file.is_file():
            continue
        if encoder == "onnxruntime":
            recorded = {bundle.encoder_sha256: bundle.graphs["encoder"].precision}
        else:
            recorded = {b.plans["encoder"].sha256: b.precision
                        for b in bundle.builds.values() if "encoder" in b.plans}  # fmt: skip
        precision = recorded.get(file_sha256(file))
        if precision is None:
            raise BundleError(
                f"{file}: its sha256 is not the bundle manifest's for the encoder "
                f"({bundle.path}); write the repository again with inctrl-export triton"
            )
        return precision
    return bundle.graphs["encoder"].precision


@dataclass(frozen=True)
class Frame:
    """One image of a request, decoded and cut as its category's bank says."""

    request: int  # its request's index in the batch
    category: str
    image: DecodedImage
    watched: bool = True  # a part of its category's drift monitor

    @property
    def views(self) -> int:
        return len(self.image.views)


class EntryStage:
    """Scores each image of a batch of requests against its category's bank (python model
    ``inctrl``): decisions at rate ``fpr``, regions at ``region_fpr`` (None: ``fpr``);
    ``encode`` runs the encoder (at ``precision``; None: the bundle's encoder graph's); a
    calibrated category's drift monitor alarms at ``drift_delta`` and is published through
    ``gauges`` (None: not published). A calibration of another precision than the encoder's
    gives no decisions."""

    inputs = (IMAGE, CATEGORY)
    optional = (WATCHED,)

    def __init__(
        self,
        bundle: Bundle,
        engine: Engine,
        encode: Encode,
        fpr: float,
        categories: Sequence[str] = (),
        region_fpr: float | None = None,
        drift_delta: float = DEFAULT_DELTA,
        gauges: Gauges | None = None,
        precision: str | None = None,
    ) -> None:
        self.bundle = bundle
        # the served encoder's: a calibration of another precision decides nothing
        self.precision = precision or bundle.graphs["encoder"].precision
        self.engine = engine
        self.encode = encode
        self.fpr = fpr
        self.region_fpr = fpr if region_fpr is None else region_fpr
        self.features = tuple(spec.name for spec in bundle.graphs["encoder"].outputs)
        self.banks = RegisteredBanks(bundle)
        self.drift_delta = drift_delta
        self.gauges = gauges
        self.monitors: dict[str, DriftMonitor] = {}
        for category in categories:  # read ahead; a damaged bank fails alone when asked for
            with contextlib.suppress(InputError):
                self.bank(category)

    @classmethod
    def open(
        cls,
        args: Mapping[str, str],
        encoder: Callable[[Bundle, int], Encode],
        gauges: Callable[[], Gauges] | None = None,
    ) -> EntryStage:
        """Open from Triton's ``initialize`` arguments; ``encoder(bundle, max_batch)`` makes
        the function that runs the encoder in batches of at most ``max_batch``, ``gauges()``
        the one that publishes the drift gauges."""
        parsed = ModelArgs.parse(args)
        bundle = parsed.bundle(reads=lambda bundle: [bundle.graphs["head"].file.name, PRIORS])
        precision = check_encoder_file(parsed.root, bundle)
        engine = open_graph(bundle, "head", parsed.threads)
        encode = encoder(bundle, parsed.max_batch)
        return cls(bundle, engine, encode, parsed.fpr, parsed.categories, parsed.region_fpr,
                   parsed.drift_delta, None if gauges is None else gauges(),
                   precision)  # fmt: skip

    def bank(self, category: str) -> NumpyBank:
        """A category's registered bank, read again when its file changed on disk; an unknown
        or unregistered category is a one-line error naming it."""
        self.bundle.prior(category)
        return self.banks.bank(category, then=_THEN_SERVED)

    def frames(self, index: int, request: Feeds, banks: dict[str, NumpyBank]) -> list[Frame]:
        """A request's images, decoded and cut as their categories' banks say (read into
        ``banks`` once per batch); one line refuses the request."""
        categories = texts(request[CATEGORY], "category")
        files = request[IMAGE].reshape(-1)
        if len(categories) != len(files):
            raise InputError(
                f"a request of {len(files)} images names {len(categories)} categories: give "
                "one category per image"
            )
        for category in dict.fromkeys(categories):
            if category not in banks:
                banks[category] = self.bank(category)
        tiles = sorted({banks[category].tiles for category in categories})
        if len(tiles) > 1:  # their maps would differ in length: no one tensor holds them
            raise InputError(
                f"a request's images are of categories scored with {' and '.join(map(str, tiles))}"
                " tiles a frame: send them apart"
            )
        preprocessing = self.bundle.preprocessing
        watched = request.get(WATCHED, np.ones(len(files), bool)).reshape(-1)
        return [
            Frame(index, category, decode(bytes(file), preprocessing, None,
                                          banks[category].frame_tiling), bool(watch))
            for file, category, watch in zip(files, categories, watched, strict=True)
        ]  # fmt: skip

    def run(self, requests: Sequence[Feeds]) -> list[Reply]:
        """Requests that fail to decode or name an unknown or unregistered category are
        refused; every view of the others goes through the encoder at once, then each
        category's rows through the head at once."""
        replies: list[Reply | None] = [None] * len(requests)
        frames: list[Frame] = []
        banks: dict[str, NumpyBank] = {}
        for index, request in enumerate(requests):
            try:
                frames += self.frames(index, request, banks)
            except InputError as err:
                replies[index] = err
        if not frames:
            return replies  # type: ignore[return-value]
        config = self.bundle.preprocessing
        features = self.encode(np.concatenate([f.image.pixels(config) for f in frames]))
        starts = np.cumsum([0, *(frame.views for frame in frames)])
        answers: list[Feeds] = [{}] * len(frames)
        for category in dict.fromkeys(frame.category for frame in frames):
            mine = [i for i, frame in enumerate(frames) if frame.category == category]
            rows = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in mine])
            found = self.outputs(
                {name: features[name][rows] for name in self.features},
                [frames[i].image for i in mine], category, banks[category],
                np.array([frames[i].watched for i in mine]),
            )  # fmt: skip
            for row, i in enumerate(mine):
                answers[i] = {name: array[row : row + 1] for name, array in found.items()}
        by_request: dict[int, list[Feeds]] = {}
        for frame, answer in zip(frames, answers, strict=True):
            by_request.setdefault(frame.request, []).append(answer)
        for index, found in by_request.items():
            replies[index] = {name: np.concatenate([a[name] for a in found]) for name in OUTPUTS}
        return replies  # type: ignore[return-value]

    def outputs(
        self,
        features: Feeds,
        images: Sequence[DecodedImage],
        category: str,
        bank: NumpyBank,
        watched: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """Every entry output for B images of one category from their views' features (a row
        per view: B, or B * T views, image by image; the head runs on each of the bank's view
        groups), as B rows; the ``watched`` ones (B bools; None: all)
        join the category's drift monitor when it is calibrated."""
        parts = []
        for group, feeds in zip(bank.groups, head_feeds(bank, self.bundle.prior(category)),
                                strict=True):  # fmt: skip
            rows = _view_rows(len(images), bank.tiles, group)
            found = self.engine.run({**{n: a[rows] for n, a in features.items()}, **feeds})
            parts.append(Scores(**{n: found[n] for n in SCORE_FIELDS}))
        views = view_scores(parts, bank.groups, bank.tiles)
        scores, decisive = frame_scores(views, bank.tiles)
        arrays = {name: np.asarray(getattr(scores, name)) for name in SCORE_FIELDS}
        calibration = bank.calibration
        other = calibration.other_precision(self.precision) if calibration is not None else None
        if other:  # no decisions, regions or monitor; said in the server's log (Python's
            # warnings: once per category and message)
            warnings.warn(f"category {category!r}: {other}", CalibrationWarning, stacklevel=2)
            calibration = None
        arrays |= decision_arrays(calibration, scores.score, self.fpr)
        rule = None if calibration is None else region_rule(calibration, self.region_fpr)
        size = self.bundle.preprocessing.size
        framings = [image.layout or Framing(*image.frame, size) for image in images]
        arrays |= where_arrays(rule, scores.patch_residual_map, framings, decisive)
        watched = np.ones(len(images), bool) if watched is None else watched
        if calibration is not None and watched.any():
            self.watch(category, bank, scores.score[watched], arrays[ANOMALOUS][watched])
        return {name: a if a.ndim == 2 else a.reshape(-1, 1) for name, a in arrays.items()}

    def watch(
        self, category: str, bank: NumpyBank, scores: np.ndarray, flagged: np.ndarray
    ) -> None:
        """Add a calibrated category's frames to its drift monitor (one for the bank served:
        a bank registered or calibrated anew starts it again) and publish its gauges."""
        monitor = self.monitors.get(category)
        if monitor is None or monitor.bank.digest != bank.digest:
            monitor = self.monitors[category] = DriftMonitor(self.bundle.path, category, bank)
        drifts = monitor.take(scores, self.drift_delta, flagged.tolist())
        if self.gauges is not None:
            last = drifts[-1]
            self.gauges(category, last.evidence, last.alarm, monitor.flagged / last.observed)

    def close(self) -> None:
        self.engine.close()


def _view_rows(images: int, views: int, group: Sequence[int]) -> np.ndarray:
    """The feature rows (image by image, ``views`` a frame) of the views at ``group``'s
    positions, image by image."""
    return (np.arange(images)[:, None] * views + np.asarray(group)[None, :]).reshape(-1)
