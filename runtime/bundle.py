"""The bundle as the runtime reads it: a manifest it trusts only after checking it, exposed as
typed records (no other module reads the manifest's dicts).

``Bundle.open`` refuses, in one line that names the file and what to do, a folder without a
manifest, a manifest of another schema version, a file named anywhere in the manifest that lies
outside the bundle or is not listed with its size and sha256, a missing file, a file whose size
or sha256 differ from the record, a model record, preprocessing or text priors that cannot be
right (non-finite, a zero std, another image size), and graph signatures other than those the
runtime feeds and reads for that model (``inctrl_runtime.contract``). Each engine is checked
against these records when it opens (``inctrl_runtime.engines.check_signature``).
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

import numpy as np

from inctrl_runtime.contract import DYNAMIC_AXES, GRAPHS, graph_shapes
from inctrl_runtime.engines import REEXPORT, TensorSpec, signature_difference
from inctrl_runtime.errors import BundleError, InputError, one_line
from inctrl_runtime.fewshot import BankShape, category_file
from inctrl_runtime.files import file_sha256
from inctrl_runtime.manifest import (
    ENGINES_KEY,
    MANIFEST,
    ExportCheck,
    ModelRecord,
    QuantizationRecord,
    SourceRecord,
    read_manifest,
)
from inctrl_runtime.preprocess import Preprocessing

if TYPE_CHECKING:
    from inctrl_runtime.engines.tensorrt.plans import Build

PRIORS = "priors.json"
REFERENCES_DIR = "references"
# Priors are unit vectors; JSON floats keep float32 to ~1e-7, so this only catches damage.
_UNIT_NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class GraphInfo:
    """One graph of the bundle as the manifest records it: file, signature, precision, and
    how it was quantized (None: a float graph)."""

    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str
    quantization: QuantizationRecord | None = None


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: its model record, graphs, preprocessing, the text prior of each
    category, and the manifest's other records (files, source, export check, TensorRT builds)."""

    path: Path
    model: ModelRecord
    preprocessing: Preprocessing
    graphs: dict[str, GraphInfo]
    priors: dict[str, np.ndarray]  # category -> 2 x E float32, rows (normal, anomaly)
    files: dict[str, str]  # every listed file (relative name) -> its sha256
    source: SourceRecord
    verification: ExportCheck | None  # the export's own check (None: not run)
    _manifest: Mapping[str, Any] = field(repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike, check_files: bool = True) -> Bundle:
        """Read and check a bundle folder; ``check_files=False`` skips the sha256 of each file
        (sizes are still checked)."""
        path = Path(path)
        manifest = read_manifest(path)
        _check_files(path, manifest, check_files)
        where = path / MANIFEST
        try:
            model = ModelRecord.from_manifest(manifest["model"])
            graphs = {
                name: _graph_info(path, name, manifest["graphs"][name], model, manifest["files"])
                for name in GRAPHS
            }
            preprocessing = _preprocessing(manifest["preprocessing"], model)
            source = SourceRecord.from_manifest(manifest.get("source"))
            verification = ExportCheck.from_manifest(manifest.get("verification"))
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            message = f"{where}: incomplete or invalid manifest ({err}); {REEXPORT}"
            raise BundleError(message) from None
        if PRIORS not in manifest["files"]:
            raise BundleError(f"{where}: does not list {PRIORS} with its sha256; {REEXPORT}")
        priors = read_priors(path / PRIORS, model.embed_dim)
        return cls(
            path=path,
            model=model,
            preprocessing=preprocessing,
            graphs=graphs,
            priors=priors,
            files={name: record["sha256"] for name, record in manifest["files"].items()},
            source=source,
            verification=verification,
            _manifest=manifest,
        )

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.priors)

    @property
    def encoder_sha256(self) -> str:
        """Identifies the encoder that reference banks of this bundle were made with."""
        return self.files[self.graphs["encoder"].file.name]

    @property
    def bank_shape(self) -> BankShape:
        """The shapes this bundle's reference banks must have."""
        return self.model.bank_shape

    @property
    def is_demo(self) -> bool:
        return self.source.demo

    @property
    def source_file(self) -> str | None:
        """The file name of the checkpoint this bundle was exported from (None: exported from a
        model in memory)."""
        return self.source.file

    @functools.cached_property
    def builds(self) -> dict[str, Build]:
        """The TensorRT builds the manifest records, by key ({} when none; read on first use,
        so that a damaged record refuses only what uses it)."""
        from inctrl_runtime.engines.tensorrt.plans import read_builds

        return read_builds(self._manifest.get(ENGINES_KEY), self.path / MANIFEST)

    def prior(self, category: str) -> np.ndarray:
        """The 2 x E text prior of a category; unknown categories are a one-line error."""
        if category not in self.priors:
            known = ", ".join(self.categories)
            raise InputError(
                f"category {category!r} has no text prior in {self.path} (it has: {known}); "
                f"export the bundle again with --category {one_line(category)}"
            )
        return self.priors[category]

    def check_sha256(self, names: Iterable[str]) -> None:
        """Hash the listed files named (``files``' keys) against the manifest: for a reader
        that opened the bundle with ``check_files=False`` and reads only these."""
        for name in names:
            _check_sha256(self.path / name, self.files[name])

    def reference_path(self, category: str) -> Path:
        """Where the registered reference bank of a category lives: references/<category>.npz."""
        return category_file(self.path / REFERENCES_DIR, category, ".npz")


def inside(folder: Path, name: object, where: Path) -> Path:
    """``folder/name`` for a file name the manifest gives, refused unless it is a plain relative
    path that stays inside the folder (no ``..``, no absolute path, no symlink out)."""
    parts = PurePosixPath(name).parts if isinstance(name, str) else ()
    escapes = not parts or PurePosixPath(name).is_absolute() or ".." in parts or "\\" in name
    file = folder / name if not escapes else folder
    if escapes or not file.resolve().is_relative_to(folder.resolve()):
        raise BundleError(
            f"{where}: names the file {name!r}, which is not inside the bundle; {REEXPORT}"
        )
    return file


def _check_files(path: Path, manifest: dict, check_sha256: bool) -> None:
    files = manifest.get("files")
    where = path / MANIFEST
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{where}: lists no files; {REEXPORT}")
    for name, record in files.items():
        file = inside(path, name, where)
        if not isinstance(record, dict) or not isinstance(record.get("sha256"), str):
            raise BundleError(f"{where}: no size and sha256 recorded for {name}; {REEXPORT}")
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle; {REEXPORT}")
        if file.stat().st_size != record.get("bytes"):
            raise BundleError(
                f"{file}: {file.stat().st_size} bytes, the manifest says {record.get('bytes')} "
                f"(truncated or replaced); {REEXPORT}"
            )
        if check_sha256:
            _check_sha256(file, record["sha256"])


def _check_sha256(file: Path, recorded: str) -> None:
    if file_sha256(file) != recorded:
        raise BundleError(
            f"{file}: sha256 differs from the manifest (tampered with or damaged); {REEXPORT}"
        )


def _graph_info(path: Path, name: str, record: dict, model: ModelRecord, files: dict) -> GraphInfo:
    def specs(entries: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(e["name"], tuple(e["shape"]), e.get("dtype", "float32")) for e in entries
        )

    where = path / MANIFEST
    if record["file"] not in files:
        raise BundleError(
            f"{where}: the {name} graph's file {record['file']!r} is not among the listed and "
            f"hashed files, so it cannot be checked; {REEXPORT}"
        )
    graph = GraphInfo(
        file=inside(path, record["file"], where),
        inputs=specs(record["inputs"]),
        outputs=specs(record["outputs"]),
        precision=record["precision"],
        quantization=QuantizationRecord.from_manifest(record.get("quantization")),
    )
    contract = graph_shapes(name, model, dict.fromkeys(DYNAMIC_AXES, "?"))
    for kind, recorded, wanted in zip(
        ("inputs", "outputs"), (graph.inputs, graph.outputs), contract, strict=True
    ):
        expected = tuple(TensorSpec(n, shape, "float32") for n, shape in wanted.items())
        difference = signature_difference(recorded, expected)
        if difference:
            raise BundleError(
                f"{where}: the {name} graph's {kind} are not what this runtime "
                f"{'feeds' if kind == 'inputs' else 'reads'} for this model ({difference}); "
                f"{REEXPORT} from the same inctrl release"
            )
    return graph


def _preprocessing(record: dict, model: ModelRecord) -> Preprocessing:
    """The manifest's preprocessing, refused where it cannot be right for the model."""
    preprocessing = Preprocessing.from_manifest(record)
    if preprocessing.size != model.image_size:
        raise ValueError(
            f"preprocessing resizes to {preprocessing.size}, the model takes {model.image_size}"
        )
    for name in ("mean", "std"):
        values = getattr(preprocessing, name)
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise ValueError(f"preprocessing {name} must be 3 finite numbers, got {list(values)}")
    if min(preprocessing.std) <= 0:
        raise ValueError(f"preprocessing std must be positive, got {list(preprocessing.std)}")
    return preprocessing


def read_priors(path: Path, embed_dim: int) -> dict[str, np.ndarray]:
    """``priors.json``: category -> {normal: [E], anomaly: [E]}, as 2 x E float32 arrays."""
    try:
        raw = json.loads(path.read_text())
        priors = {
            category: np.asarray([value["normal"], value["anomaly"]], dtype=np.float32)
            for category, value in raw.items()
        }
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: not readable JSON ({err}); {REEXPORT}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise BundleError(f"{path}: not a priors file ({err}); {REEXPORT}") from None
    for category, prior in priors.items():
        if prior.shape != (2, embed_dim):
            problem = f"has shape {prior.shape}, the model needs (2, {embed_dim})"
        elif not np.isfinite(prior).all():
            problem = "holds values that are not finite numbers"
        elif np.abs(np.linalg.norm(prior, axis=1) - 1).max() > _UNIT_NORM_TOLERANCE:
            problem = "is not a pair of unit vectors"
        else:
            continue
        raise BundleError(f"{path}: the prior of {category!r} {problem}; {REEXPORT}")
    return priors
