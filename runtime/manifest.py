"""The bundle's manifest: its file, and typed records of what it says (``Bundle`` holds them).

Only the bundle layer (this module and ``inctrl_runtime.bundle``) reads the manifest's dicts;
everything else reads these records. Writers: ``inctrl-export onnx`` writes the manifest,
``inctrl-export tensorrt`` records its builds with ``record_build``.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inctrl_runtime.contract import ModelSizes
from inctrl_runtime.engines import REEXPORT
from inctrl_runtime.errors import BundleError
from inctrl_runtime.fewshot import BankShape
from inctrl_runtime.files import FORMAT, MANIFEST, write_json

SCHEMA_VERSION = 1
ENGINES_KEY = "engines"  # the manifest's record of the TensorRT builds


def read_manifest(path: Path) -> dict:
    """The manifest of a bundle folder, with its format and schema version checked."""
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"{path}: no such bundle folder (make one with inctrl-export onnx)")
    if not manifest_path.is_file():
        raise BundleError(f"{path}: has no {MANIFEST}, so it is not an inctrl bundle; {REEXPORT}")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{manifest_path}: not readable JSON ({err}); {REEXPORT}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{manifest_path}: not an inctrl bundle manifest; {REEXPORT}")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise BundleError(
            f"{manifest_path}: bundle schema version {version!r}, but this inctrl_runtime reads "
            f"version {SCHEMA_VERSION}; {REEXPORT} from the same inctrl release"
        )
    return manifest


def _field(record: Mapping, key: str, kinds: type | tuple[type, ...], what: str) -> Any:
    """``record[key]`` (None when absent), refused unless it is None or of ``kinds``."""
    value = record.get(key)
    plain_bool = kinds is not bool and isinstance(value, bool)  # True is no number here
    if value is not None and (plain_bool or not isinstance(value, kinds)):
        raise ValueError(f"{what}.{key} is {type(value).__name__} {value!r}")
    return value


def _record(value: object, what: str) -> Mapping | None:
    """A manifest record: an object, or None where it is absent."""
    if value is not None and not isinstance(value, Mapping):
        raise ValueError(f"{what} is {type(value).__name__} {value!r}, not an object")
    return value


class VerificationWarning(UserWarning):
    """The bundle's own export check (or a TensorRT build's) found outputs outside the parity
    tolerance."""


@dataclass(frozen=True)
class ModelRecord(ModelSizes):
    """The manifest's ``model`` record: the sizes every graph, bank and prior of the bundle
    must agree with, and what the model is."""

    preset: str | None = None
    backbone: str | None = None
    tapped_blocks: tuple[int, ...] = ()
    config: Mapping[str, Any] = field(default_factory=dict)  # ``InCTRLConfig.to_dict()``

    @classmethod
    def from_manifest(cls, record: dict) -> ModelRecord:
        sizes = {
            "image_size": record["image_size"],
            "num_patches": record["num_patches"],
            "layers": len(record["tapped_blocks"]),
            "width": record["width"],
            "embed_dim": record["embed_dim"],
        }
        bad = [
            k for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1
        ]
        if bad:
            raise ValueError(f"model record: {', '.join(bad)} not a positive integer")
        return cls(
            **sizes,
            preset=record.get("name"),
            backbone=record.get("backbone"),
            tapped_blocks=tuple(record["tapped_blocks"]),
            config=record.get("config") or {},
        )

    @property
    def bank_shape(self) -> BankShape:
        return BankShape(self.layers, self.num_patches, self.width, self.embed_dim)


@dataclass(frozen=True)
class ExportCheck:
    """An export's own check against PyTorch (the bundle's, or a TensorRT build's), as the
    manifest records it."""

    passed: bool
    max_abs_diff: float | None

    @classmethod
    def from_manifest(cls, record: object, what: str = "verification") -> ExportCheck | None:
        """None where no check was recorded; a record of other types is refused."""
        record = _record(record, what)
        if not record:
            return None
        difference = _field(record, "max_abs_diff", (int, float), what)
        passed = _field(record, "passed", bool, what)
        return cls(bool(passed), None if difference is None else float(difference))

    def warn_if_failed(self, what: str, stacklevel: int = 3) -> None:
        """A VerificationWarning that ``what`` (e.g. ``bundle/: this bundle``) failed it."""
        if not self.passed:
            warnings.warn(
                f"{what} failed its check against PyTorch (max abs diff "
                f"{self.max_abs_diff}); see its manifest",
                VerificationWarning,
                stacklevel=stacklevel,
            )


@dataclass(frozen=True)
class QuantizationRecord:
    """How a graph was quantized (``inctrl-export onnx --precision int8``), as recorded."""

    format: str | None
    activations: str | None
    weights: str | None
    method: str | None
    images: int | None  # calibration images
    fp32_products: tuple[str, ...]  # block products kept in fp32
    fp32_because: str | None
    raw: Mapping[str, Any]
    int8_products: int | None = None
    fp32_choices: tuple[str, ...] = ()  # the split, as --keep-fp32 names it (older: none)

    @classmethod
    def from_manifest(cls, record: object, what: str = "quantization") -> QuantizationRecord | None:
        """None for a float graph; a record of other types is refused."""
        record = _record(record, what)
        if record is None:
            return None
        texts = {k: _field(record, k, str, what) for k in ("format", "activations", "weights",
                                                           "method", "fp32_because")}  # fmt: skip
        names = {}
        for key in ("fp32_products", "fp32_choices"):
            names[key] = tuple(_field(record, key, list, what) or [])
            if not all(isinstance(name, str) for name in names[key]):
                raise ValueError(f"{what}.{key} holds something other than names")
        return cls(
            **texts,
            **names,
            images=_field(record, "images", int, what),
            int8_products=_field(record, "int8_products", int, what),
            raw=dict(record),
        )

    @property
    def split(self) -> str:
        """Which block products stayed fp32, in words: ``every block product int8``, or e.g.
        ``fp32: out_proj, c_proj (12 of 24 block products)``."""
        fp32 = len(self.fp32_products)
        if not fp32:
            return "every block product int8"
        of = "" if self.int8_products is None else f" of {fp32 + self.int8_products}"
        if not self.fp32_choices:
            return f"{fp32}{of} block products fp32"
        return f"fp32: {', '.join(self.fp32_choices)} ({fp32}{of} block products)"

    def summary(self) -> dict:
        """The record without the calibration images' digests (their count stays), and its
        ``split`` in words, as ``info`` and the bench report it."""
        record = {k: v for k, v in self.raw.items() if k != "image_digests"}
        return {**record, "split": self.split}


@dataclass(frozen=True)
class SourceRecord:
    """Where the bundle's model came from: a checkpoint by file name and sha256, or the
    embedded demo, or a model in memory (no file)."""

    file: str | None
    sha256: str | None
    demo: bool

    @classmethod
    def from_manifest(cls, record: object, what: str = "source") -> SourceRecord:
        """The record (none recorded: no file, not the demo); one of other types is refused."""
        record = _record(record, what) or {}
        # a schema-1 manifest that recorded a path gives its name
        recorded = _field(record, "file", str, what) or _field(record, "checkpoint", str, what)
        return cls(
            file=Path(recorded).name if recorded else None,
            sha256=_field(record, "sha256", str, what),
            demo=bool(_field(record, "demo", bool, what)),
        )


def record_build(bundle: str | Path, key: str, record: dict | None) -> None:
    """Set (or, with None, drop) one TensorRT build's record in a bundle's manifest, read again
    just before it is written so that a concurrent change elsewhere in it is kept."""
    path = Path(bundle)
    manifest = read_manifest(path)
    builds = manifest.setdefault(ENGINES_KEY, {})
    if record is not None:
        builds[key] = record
    elif key in builds:
        del builds[key]
    else:
        return
    write_json(path / MANIFEST, manifest)


def drop_builds(bundle: str | Path) -> None:
    """Remove every TensorRT build's record from a bundle's manifest (a copy that builds its
    own)."""
    path = Path(bundle)
    manifest = read_manifest(path)
    manifest.pop(ENGINES_KEY, None)
    write_json(path / MANIFEST, manifest)
