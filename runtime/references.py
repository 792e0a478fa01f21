"""A category's reference bank as the runtime keeps it, in one ``.npz`` file, and the banks
registered in a bundle (``references/<category>.npz``): the one home of both.

The file records its format version, the category it was registered for, the sha256 of the
encoder that made it, once calibrated its calibration (``inctrl_runtime.decisions``: a bank
and its calibration live and die together) and a digest of its own contents. ``NumpyBank.load``
checks all of it (and every array's dtype, shape and finiteness) and refuses, in one line that
says how to register again, anything else; ``read_digest`` reads the digest alone, so that a
long-lived reader knows whether the file changed without loading it.

How the format grows (docs/architecture.md, "Reference banks"): new fields are optional arrays
added within format 2, whose absence means "not available", so banks registered earlier keep
loading. Every array beyond the core, the calibration and the selection is digested by name,
dtype, shape and bytes, in name order, and kept as it is (``NumpyBank.extras``) by a reader that
does not know it; a new calibration drops the ``calibration_*`` ones it does not know. A field
that changes what the bank means is named in the array ``requires``: a reader refuses a bank
that requires what it does not know.

``RegisteredBanks`` is what a long-lived scorer (``Detector``, the Triton head) holds: each
category's bank read once, again only when its file's digest changes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from inctrl_runtime.decisions import Calibration
from inctrl_runtime.errors import InputError, one_line
from inctrl_runtime.fewshot import BankShape, check_category_name
from inctrl_runtime.files import atomic_path
from inctrl_runtime.tiling import FrameTiling, Tiling

if TYPE_CHECKING:
    from inctrl_runtime.bundle import Bundle

# 1: inctrl 0.1 (no version, category or digest); 2: adds them.
BANK_FORMAT = 2
_ARRAYS = (
    "format_version",
    "category",
    "digest",
    "patches",
    "adapted_mean",
    "shots",
    "sources",
    "digests",
    "encoder_sha256",
)
# The calibration's arrays, present once a category is calibrated (-> Calibration fields).
_CALIBRATION = {
    "calibration_scores": "scores",
    "calibration_digests": "digests",
    "calibration_backend": "backend",
    "calibration_precision": "precision",
    "calibration_encoder_sha256": "encoder_sha256",
    "calibration_created": "created",
}
# Optional within a calibration: the images' map maxima (regions), digested as a further array.
_MAP_MAXIMA = "calibration_map_maxima"
_SELECTION = "selection"
# Optional: a small picture of each prompt (k x S x S x 3 uint8, letterboxed), for reports.
_THUMBNAILS = "prompt_thumbnails"
# A tiled bank's grid and frame size (JSON), which changes what the bank means: required.
_TILING = "tiling"
TILES = "tiles"
# A tiled bank with a whole view: each view position's mean adapted embedding (T x E), for the
# banks of its view groups (``Tiling.groups``); required with it.
_VIEW_ADAPTED = "view_adapted_means"
WHOLE_VIEW = "whole_view"
# Names the array ``requires`` may hold that this runtime knows how to read.
KNOWN_REQUIREMENTS: tuple[str, ...] = (TILES, WHOLE_VIEW)
REQUIRES = "requires"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KNOWN = frozenset(
    (
        *_ARRAYS,
        *_CALIBRATION,
        _MAP_MAXIMA,
        _SELECTION,
        _TILING,
        REQUIRES,
        _THUMBNAILS,
        _VIEW_ADAPTED,
    )  # fmt: skip
)
# What a damaged .npz raises inside numpy and zipfile.
_DAMAGED = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


@dataclass(frozen=True)
class NumpyBank:
    """What the k normal prompt images of one category contribute to scoring, as numpy arrays
    (the runtime's counterpart of ``inctrl.ReferenceBank``, which holds torch tensors).

    Attributes:
        patches: L x N x D float32, the tapped patch tokens of all prompts (N = k * P), unit norm.
        adapted_mean: E float32, mean over prompts of the adapted embeddings.
        shots: k.
        sources: where each prompt image came from.
        digests: sha256 of each preprocessed prompt image (float32 bytes, as ``inctrl``'s).
        encoder_sha256: the encoder.onnx that made it.
        category: the category it was registered for (None: not registered yet).
        calibration: the category's calibration, made with this bank (None: uncalibrated).
        selection: how the prompts were chosen from a pool, e.g. ``{"method": "coverage",
            "pool": 25, "seed": 0, "mean_residual": 0.0046}`` (None: given as they are).
        extras: arrays of later additions to the format, kept and digested as they are.
        tiling: a tiled bank's grid (``tiling.Tiling``; None: prompts seen whole); its patch
            tokens are then the k x T tiles' (N = k * T * P) and its adapted mean theirs.
        frame_size: a tiled bank's frame (width, height): its queries must have it.
        thumbnails: k x S x S x 3 uint8, a small picture of each prompt, letterboxed (None:
            not kept, e.g. a bank registered before they were).
        view_adapted: T x E float32, a tiled bank's mean adapted embedding at each view
            position, for the banks of its view groups (a bank with a whole view has it).
    """

    patches: np.ndarray
    adapted_mean: np.ndarray
    shots: int
    sources: tuple[str, ...]
    digests: tuple[str, ...]
    encoder_sha256: str
    category: str | None = None
    calibration: Calibration | None = None
    selection: dict | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    tiling: Tiling | None = None
    frame_size: tuple[int, int] | None = None
    thumbnails: np.ndarray | None = None
    view_adapted: np.ndarray | None = None

    @functools.cached_property
    def digest(self) -> str:
        """sha256 over everything the bank holds: changes whenever its contents do (computed
        once per bank: saving, loading and the reader's cache all ask for it)."""
        digest = hashlib.sha256()
        for text in (str(BANK_FORMAT), self.category or "", self.encoder_sha256, str(self.shots)):
            digest.update(text.encode() + b"\0")
        for text in (*self.sources, *self.digests, json.dumps(self.selection, sort_keys=True)):
            digest.update(text.encode() + b"\0")
        for array in (self.patches, self.adapted_mean):
            digest.update(np.ascontiguousarray(array, dtype=np.float32).tobytes())
        if self.calibration is not None:
            calibration = self.calibration
            for text in (*calibration.digests, calibration.backend, calibration.precision,
                         calibration.encoder_sha256, calibration.created):  # fmt: skip
                digest.update(text.encode() + b"\0")
            digest.update(np.ascontiguousarray(calibration.scores, dtype=np.float32).tobytes())
        further = {**self.extras, **self._map_maxima(), **self._tiling_arrays(),
                   **self._thumbnail_arrays()}  # fmt: skip
        for name in sorted(further):
            array = np.ascontiguousarray(further[name])
            digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
            digest.update(array.tobytes())
        return digest.hexdigest()

    def _map_maxima(self) -> dict[str, np.ndarray]:
        """The calibration's map maxima as the array that holds them (a later addition to the
        format: digested as every further array is), if it has them."""
        if self.calibration is None or self.calibration.map_maxima is None:
            return {}
        return {_MAP_MAXIMA: np.asarray(self.calibration.map_maxima, dtype=np.float32)}

    def _tiling_arrays(self) -> dict[str, np.ndarray]:
        """A tiled bank's grid and frame size, its views' adapted means where it has a whole
        view, and the requirement that a reader know them (later additions to the format:
        digested as every further array is)."""
        if self.tiling is None or self.frame_size is None:
            return {}
        record = {**self.tiling.record(), "frame_size": list(self.frame_size)}
        required = [TILES]
        arrays = {_TILING: np.str_(json.dumps(record))}
        if self.tiling.whole:
            required.append(WHOLE_VIEW)
            arrays[_VIEW_ADAPTED] = np.ascontiguousarray(self.view_adapted, dtype=np.float32)
        return {**arrays, REQUIRES: np.array(required, dtype=np.str_)}

    def _thumbnail_arrays(self) -> dict[str, np.ndarray]:
        """The prompts' thumbnails (a later addition: digested as every further array is)."""
        if self.thumbnails is None:
            return {}
        return {_THUMBNAILS: np.ascontiguousarray(self.thumbnails, dtype=np.uint8)}

    @property
    def groups(self) -> tuple[tuple[int, ...], ...]:
        """The view positions that share a bank (``Tiling.groups``); one group untiled."""
        return ((0,),) if self.tiling is None else self.tiling.groups()

    def group_banks(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per view group, the patch tokens (L x k|g|P x D) and adapted mean (E) its query
        views are compared with: the prompts' views at the group's positions."""
        if len(self.groups) == 1:
            return [(self.patches, self.adapted_mean)]
        layers, _, width = self.patches.shape
        by_view = self.patches.reshape(layers, self.shots, self.tiles, -1, width)
        return [
            (np.ascontiguousarray(by_view[:, :, list(group)].reshape(layers, -1, width)),
             self.view_adapted[list(group)].mean(axis=0, dtype=np.float32))
            for group in self.groups
        ]  # fmt: skip

    @property
    def tiles(self) -> int:
        """T, the tiles each prompt (and query) is cut into: 1 for a bank seen whole."""
        return 1 if self.tiling is None else self.tiling.count

    @property
    def images(self) -> int:
        """How many images' patch tokens the bank holds: k, or k * T for a tiled bank."""
        return self.shots * self.tiles

    @property
    def frame_tiling(self) -> FrameTiling | None:
        """A tiled bank's grid for frames of its one size: its queries are cut so (None:
        untiled)."""
        if self.tiling is None or self.frame_size is None:
            return None
        return FrameTiling(self.tiling, self.frame_size, f"the bank of {self.category!r}")

    def calibrated(self, calibration: Calibration) -> NumpyBank:
        """This bank with a new calibration, without the ``calibration_*`` extras of another."""
        extras = {k: v for k, v in self.extras.items() if not k.startswith("calibration_")}
        return replace(self, calibration=calibration, extras=extras)

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank as ``.npz`` (no pickled objects), atomically; it must have a category."""
        if self.category is None:
            raise ValueError("a bank is saved for a category: give it one (dataclasses.replace)")
        # Into memory first: numpy's savez leaves its zip file open when a write to disk fails
        # (numpy 1.x), which would print noise after the one-line error of a full disk.
        packed = io.BytesIO()
        np.savez(
            packed,
            format_version=np.int64(BANK_FORMAT),
            category=np.str_(self.category),
            digest=np.str_(self.digest),
            patches=np.ascontiguousarray(self.patches, dtype=np.float32),
            adapted_mean=np.ascontiguousarray(self.adapted_mean, dtype=np.float32),
            shots=np.int64(self.shots),
            sources=np.array(self.sources, dtype=np.str_),
            digests=np.array(self.digests, dtype=np.str_),
            encoder_sha256=np.str_(self.encoder_sha256),
            **self._optional_arrays(),
        )
        with atomic_path(path) as tmp:
            tmp.write_bytes(packed.getbuffer())

    def _optional_arrays(self) -> dict[str, np.ndarray]:
        """The calibration's, the selection's and the extras' arrays, for the banks that have
        them."""
        arrays = {**self.extras, **self._map_maxima(), **self._tiling_arrays(),
                  **self._thumbnail_arrays()}  # fmt: skip
        if self.selection is not None:
            arrays[_SELECTION] = np.str_(json.dumps(self.selection))
        if self.calibration is None:
            return arrays
        values = {name: getattr(self.calibration, field) for name, field in _CALIBRATION.items()}
        arrays |= {name: np.str_(value) for name, value in values.items()}
        arrays["calibration_scores"] = np.asarray(values["calibration_scores"], dtype=np.float32)
        arrays["calibration_digests"] = np.array(values["calibration_digests"], dtype=np.str_)
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike) -> NumpyBank:
        """Read a bank file and check it is whole and consistent (not yet that it fits a model:
        ``check``)."""
        path = Path(path)
        again = "register the category again (inctrl-run register)"
        try:
            with np.load(path, allow_pickle=False) as data:
                version = int(data["format_version"]) if "format_version" in data.files else 1
                if version != BANK_FORMAT:
                    raise InputError(
                        f"{path}: a reference bank of format {version}, this inctrl_runtime reads "
                        f"format {BANK_FORMAT}; {_register_command(path, data)}"
                    )
                missing = [name for name in _ARRAYS if name not in data.files]
                if missing:
                    raise InputError(
                        f"{path}: incomplete reference bank, lacks {', '.join(missing)}; {again}"
                    )
                arrays = {name: data[name] for name in data.files}
                _check_requirements(path, arrays)
                selection = json.loads(str(arrays[_SELECTION])) if _SELECTION in arrays else None
                tiled = _tiled(json.loads(str(arrays[_TILING]))) if _TILING in arrays else {}
        except _DAMAGED as err:
            reason = str(err).split("\n")[0] or type(err).__name__
            raise InputError(
                f"{path}: not a readable reference bank (damaged or truncated: {reason}); {again}"
            ) from None
        problem = _problem(arrays) or _calibration_problem(arrays) or _views_problem(arrays, tiled)
        if problem:
            raise InputError(f"{path}: not a valid reference bank ({problem}); {again}")
        bank = cls(
            patches=arrays["patches"],
            adapted_mean=arrays["adapted_mean"],
            shots=int(arrays["shots"]),
            sources=tuple(str(s) for s in arrays["sources"]),
            digests=tuple(str(d) for d in arrays["digests"]),
            encoder_sha256=str(arrays["encoder_sha256"]),
            category=str(arrays["category"]),
            calibration=_calibration(arrays),
            selection=selection if isinstance(selection, dict) else None,
            extras={name: a for name, a in arrays.items() if name not in _KNOWN},
            **tiled,
            thumbnails=arrays.get(_THUMBNAILS),
            view_adapted=arrays.get(_VIEW_ADAPTED),
        )
        if bank.digest != str(arrays["digest"]):
            raise InputError(f"{path}: its contents do not match its digest (damaged); {again}")
        return bank

    def check(self, shape: BankShape, encoder_sha256: str, model: str, where: str) -> None:
        """Refuse, in one line, a bank made by another encoder or of other shapes than the
        model's (``where`` names the bank in the message)."""
        again = "register the category again"
        if self.encoder_sha256 != encoder_sha256:
            raise InputError(
                f"{where}: registered with another encoder (sha256 {self.encoder_sha256[:12]}...),"
                f" not this bundle's ({encoder_sha256[:12]}...); {again}"
            )
        problem = shape.problem(self.patches.shape, self.adapted_mean.shape, self.images, model)
        if problem:
            raise InputError(f"{where}: does not fit ({problem}); {again}")


def _tiled(record: dict) -> dict:
    """A tiled bank's ``tiling`` and ``frame_size`` from the JSON it keeps; ValueError for one
    that is not what a tiled bank writes."""
    try:
        width, height = (int(side) for side in record["frame_size"])
        return {"tiling": Tiling.from_record(record), "frame_size": (width, height)}
    except (KeyError, TypeError, ValueError, InputError) as err:
        raise ValueError(f"its tiling {record!r} is not a grid and a frame size") from err


def _views_problem(arrays: Mapping[str, np.ndarray], tiled: dict) -> str:
    """What is wrong with a tiled bank's views ("" if nothing): a whole view needs each view
    position's adapted mean."""
    tiling = tiled.get("tiling")
    if tiling is None or not tiling.whole:
        return ""
    views = arrays.get(_VIEW_ADAPTED)
    if views is None or len(views) != tiling.count:
        return f"its {tiling.count} views lack their adapted means"
    return ""


def _check_requirements(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Refuse a bank that requires a feature this runtime does not know (a later format)."""
    if REQUIRES not in arrays:
        return
    unknown = sorted(set(map(str, np.ravel(arrays[REQUIRES]))) - set(KNOWN_REQUIREMENTS))
    if unknown:
        raise InputError(
            f"{path}: registered by a newer inctrl_runtime (it uses {', '.join(unknown)}); "
            "upgrade inctrl, or register the category again with this one"
        )


def read_digest(path: str | os.PathLike) -> str | None:
    """The digest a bank file records (reading nothing else), or None if it cannot be read:
    ``NumpyBank.load`` then says why."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return str(data["digest"])
    except _DAMAGED:
        return None


def _problem(arrays: dict[str, np.ndarray]) -> str:
    """What is wrong inside a bank's arrays ("" if nothing): dtypes, ranks, counts, finiteness."""
    patches, adapted = arrays["patches"], arrays["adapted_mean"]
    shots = arrays["shots"]
    if patches.dtype != np.float32 or adapted.dtype != np.float32:
        return f"patch tokens are {patches.dtype} and the adapted mean {adapted.dtype}, not float32"
    if patches.ndim != 3 or adapted.ndim != 1 or patches.shape[1] == 0:
        return f"patch tokens of shape {patches.shape}, adapted mean of shape {adapted.shape}"
    if shots.shape != () or shots.dtype.kind not in "iu" or int(shots) < 1:
        return f"its prompt count is {shots!r}"
    if patches.shape[1] % int(shots):
        return f"{patches.shape[1]} patch tokens is not a multiple of its {int(shots)} prompts"
    listed = [arrays[name] for name in ("sources", "digests")]
    if any(a.ndim != 1 or a.dtype.kind != "U" or len(a) != int(shots) for a in listed):
        return f"its {int(shots)} prompts do not each have a source and a digest"
    if not (np.isfinite(patches).all() and np.isfinite(adapted).all()):
        return "it holds values that are not finite numbers"
    view_adapted = arrays.get(_VIEW_ADAPTED)
    if view_adapted is not None and (
        view_adapted.dtype != np.float32
        or view_adapted.ndim != 2
        or view_adapted.shape[1] != adapted.shape[0]
        or not np.isfinite(view_adapted).all()
    ):
        return f"its views' adapted means are {view_adapted.dtype} of shape {view_adapted.shape}"
    thumbnails = arrays.get(_THUMBNAILS)
    if thumbnails is not None and (
        thumbnails.dtype != np.uint8
        or thumbnails.ndim != 4
        or len(thumbnails) != int(shots)
        or thumbnails.shape[3] != 3
    ):
        return f"its prompt thumbnails are {thumbnails.dtype} of shape {thumbnails.shape}"
    if not _SHA256.fullmatch(str(arrays["encoder_sha256"])):
        return "its encoder sha256 is not a sha256"
    try:
        check_category_name(str(arrays["category"]))
    except InputError:
        return f"its category {str(arrays['category'])!r} is not a category name"
    return ""


def _calibration(arrays: dict[str, np.ndarray]) -> Calibration | None:
    if "calibration_scores" not in arrays:
        return None
    values = {field: arrays[name] for name, field in _CALIBRATION.items()}
    return Calibration(
        scores=values["scores"],
        digests=tuple(str(d) for d in values["digests"]),
        **{field: str(values[field]) for field in ("backend", "precision", "encoder_sha256",
                                                   "created")},
        map_maxima=arrays.get(_MAP_MAXIMA),
    )  # fmt: skip


def _calibration_problem(arrays: dict[str, np.ndarray]) -> str:
    """What is wrong with a bank's calibration ("" if nothing, or if it has none)."""
    present = [name for name in _CALIBRATION if name in arrays]
    if not present:
        return "its calibration is incomplete" if _MAP_MAXIMA in arrays else ""
    if len(present) != len(_CALIBRATION):
        return "its calibration is incomplete"
    scores, digests = arrays["calibration_scores"], arrays["calibration_digests"]
    if scores.dtype != np.float32 or scores.ndim != 1 or len(scores) == 0:
        return f"its calibration scores are {scores.dtype} of shape {scores.shape}"
    if not np.isfinite(scores).all() or (np.diff(scores) < 0).any():
        return "its calibration scores are not finite and sorted"
    if digests.ndim != 1 or len(digests) != len(scores):
        return "its calibration images do not each have a digest"
    maxima = arrays.get(_MAP_MAXIMA)
    if maxima is not None and (
        maxima.dtype != np.float32 or maxima.shape != scores.shape
        or not np.isfinite(maxima).all() or (np.diff(maxima) < 0).any()
    ):  # fmt: skip
        return "its calibration map maxima are not one finite sorted float32 per image"
    if str(arrays["calibration_encoder_sha256"]) != str(arrays["encoder_sha256"]):
        return "its calibration was scored by another encoder than its bank's"
    return ""


def _register_command(path: Path, data) -> str:
    """The command that registers the bank at ``path`` again, with its recorded shots."""
    bundle, category = path.parent.parent, path.stem
    shots = [str(s) for s in data["sources"]] if "sources" in data.files else []
    named = [s for s in shots if not s.startswith("<")]
    shot_args = " ".join(f"--shot {s}" for s in named) if named else "--shot IMG ..."
    return f"register it again: inctrl-run register {bundle} --category {category} {shot_args}"


def not_registered(bundle: Bundle, category: str, then: str = "") -> InputError:
    """The one line for a category with no bank in ``bundle``: how to register it, and ``then``
    what follows (e.g. that a running server serves it from then on)."""
    return InputError(
        f"category {category!r} is not registered in {bundle.path}: run inctrl-run register "
        f"{bundle.path} --category {one_line(category)} --shot IMG ...{then}"
    )


def load_registered(bundle: Bundle, category: str, then: str = "") -> NumpyBank:
    """A category's registered bank (``references/<category>.npz``) read and checked: whole,
    registered for this category, by this bundle's encoder, of its shapes; ``then`` ends the
    line for an unregistered one (``not_registered``)."""
    path = bundle.reference_path(category)
    if not path.is_file():
        raise not_registered(bundle, category, then)
    bank = NumpyBank.load(path)
    if bank.category != category:
        raise InputError(
            f"{path}: holds the bank registered for category {bank.category!r}, not "
            f"{category!r} (a copied file?); register {category} with inctrl-run register"
        )
    check_fits(bundle, bank, str(path))
    return bank


def check_fits(bundle: Bundle, bank: NumpyBank, where: str) -> None:
    """Refuse a bank that another encoder made, or of other shapes than the bundle's model."""
    bank.check(bundle.bank_shape, bundle.encoder_sha256, "the bundle's model", where)


def head_feeds(bank: NumpyBank, prior: np.ndarray) -> list[dict[str, np.ndarray]]:
    """The head graph's few-shot inputs, one set per view group of the bank (one untiled): the
    group's patch tokens and adapted mean, and the category's 2 x E text prior."""
    return [
        {"ref_patches": patches, "ref_adapted": adapted, "text_prior": prior}
        for patches, adapted in bank.group_banks()
    ]


class RegisteredBanks:
    """The banks registered in a bundle, each read from disk once and again only when the
    digest its file records changes (registered or calibrated anew by another process)."""

    def __init__(self, bundle: Bundle) -> None:
        self.bundle = bundle
        self._held: dict[str, NumpyBank] = {}

    def bank(self, category: str, then: str = "") -> NumpyBank:
        """A category's registered bank (``load_registered``, ``then`` included), read again
        only when its file's digest changed."""
        held = self._held.get(category)
        if held is None or read_digest(self.bundle.reference_path(category)) != held.digest:
            held = self._held[category] = load_registered(self.bundle, category, then)
        return held

    def save(self, bank: NumpyBank) -> None:
        """Write a bank as its category's registered one (atomically) and hold it."""
        if bank.category is None:
            raise ValueError("a registered bank has a category: give it one (dataclasses.replace)")
        bank.save(self.bundle.reference_path(bank.category))
        self._held[bank.category] = bank
