"""The bundle as the runtime reads it: a manifest it trusts only after checking it.

``Bundle.open`` refuses, in one line that names the file and what to do, a folder without a
manifest, a manifest of another schema version, a missing file, a file whose size or sha256
differ from what the manifest recorded, or graph signatures other than those the runtime feeds
and reads (``GRAPH_CONTRACT``). Each engine is checked against these records when it opens
(``inctrl_runtime.engines.check_signature``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inctrl_runtime.engines import TensorSpec, signature_difference
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256
from inctrl_runtime.preprocess import Preprocessing
from inctrl_runtime.results import Scores

FORMAT = "inctrl.bundle"
SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
PRIORS = "priors.json"
REFERENCES_DIR = "references"
GRAPHS = ("encoder", "head")
_FEATURES = {"embedding": 2, "adapted": 2, "patches": 4}
# What the runtime feeds each graph and reads from it: name -> rank (all float32 at the graph's
# boundary, whatever the precision inside).
GRAPH_CONTRACT = {
    "encoder": ({"image": 4}, _FEATURES),
    "head": (
        {**_FEATURES, "ref_patches": 3, "ref_adapted": 1, "text_prior": 2},
        {name: 2 if name == "patch_residual_map" else 1 for name in Scores._fields},
    ),
}
REEXPORT = "re-export it with inctrl-export onnx"

_CATEGORY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class GraphInfo:
    """One graph of the bundle as the manifest records it: file, signature, precision."""

    file: Path
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    precision: str


@dataclass(frozen=True)
class Bundle:
    """A checked bundle: manifest, graphs, preprocessing and the text prior of each category."""

    path: Path
    manifest: dict
    preprocessing: Preprocessing
    graphs: dict[str, GraphInfo]
    priors: dict[str, np.ndarray]  # category -> 2 x E float32, rows (normal, anomaly)

    @classmethod
    def open(cls, path: str | os.PathLike, check_files: bool = True) -> Bundle:
        """Read and check a bundle folder; ``check_files=False`` skips the sha256 of each file
        (sizes are still checked)."""
        path = Path(path)
        manifest = read_manifest(path)
        _check_files(path, manifest, check_files)
        try:
            graphs = {name: _graph_info(path, name, manifest["graphs"][name]) for name in GRAPHS}
            preprocessing = Preprocessing.from_manifest(manifest["preprocessing"])
            embed_dim = int(manifest["model"]["embed_dim"])
        except (KeyError, TypeError, ValueError) as err:
            message = f"{path / MANIFEST}: incomplete manifest ({err}); {REEXPORT}"
            raise BundleError(message) from None
        priors = read_priors(path / PRIORS, embed_dim)
        return cls(path, manifest, preprocessing, graphs, priors)

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self.priors)

    @property
    def encoder_sha256(self) -> str:
        """Identifies the encoder that reference banks of this bundle were made with."""
        return self.manifest["files"][self.graphs["encoder"].file.name]["sha256"]

    @property
    def is_demo(self) -> bool:
        return bool(self.manifest.get("source", {}).get("demo", False))

    @property
    def source_file(self) -> str | None:
        """The file name of the checkpoint this bundle was exported from (None: exported from a
        model in memory); a schema-1 manifest that recorded its path gives the path's name."""
        source = self.manifest.get("source") or {}
        recorded = source.get("file") or source.get("checkpoint")
        return Path(recorded).name if recorded else None

    def prior(self, category: str) -> np.ndarray:
        """The 2 x E text prior of a category; unknown categories are a one-line error."""
        if category not in self.priors:
            known = ", ".join(self.categories)
            raise InputError(
                f"category {category!r} has no text prior in {self.path} (it has: {known}); "
                f"export the bundle again with --category {category}"
            )
        return self.priors[category]

    def reference_path(self, category: str) -> Path:
        """Where the registered reference bank of a category lives: references/<category>.npz."""
        check_category_name(category)
        return self.path / REFERENCES_DIR / f"{category}.npz"


def check_category_name(category: str) -> None:
    """Category names become file names: letters, digits and ``_ . + -``, not starting with a
    dot, so that no name can point outside the bundle."""
    if not _CATEGORY_NAME.fullmatch(category or ""):
        raise InputError(
            f"category name {category!r} is not usable: use letters, digits, '_', '-', '.', '+'"
        )


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


def _check_files(path: Path, manifest: dict, check_sha256: bool) -> None:
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise BundleError(f"{path / MANIFEST}: lists no files; {REEXPORT}")
    for name, record in files.items():
        if not isinstance(record, dict):
            raise BundleError(f"{path / MANIFEST}: bad entry for {name}; {REEXPORT}")
        file = path / name
        if not file.is_file():
            raise BundleError(f"{file}: missing from the bundle; {REEXPORT}")
        if file.stat().st_size != record.get("bytes"):
            raise BundleError(
                f"{file}: {file.stat().st_size} bytes, the manifest says {record.get('bytes')} "
                f"(truncated or replaced); {REEXPORT}"
            )
        if check_sha256 and file_sha256(file) != record.get("sha256"):
            raise BundleError(
                f"{file}: sha256 differs from the manifest (tampered with or damaged); {REEXPORT}"
            )


def _graph_info(path: Path, name: str, record: dict) -> GraphInfo:
    def specs(entries: list[dict]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(e["name"], tuple(e["shape"]), e.get("dtype", "float32")) for e in entries
        )

    graph = GraphInfo(
        file=path / record["file"],
        inputs=specs(record["inputs"]),
        outputs=specs(record["outputs"]),
        precision=record["precision"],
    )
    feeds, reads = GRAPH_CONTRACT[name]
    for kind, recorded, wanted in (
        ("inputs", graph.inputs, feeds),
        ("outputs", graph.outputs, reads),
    ):
        contract = tuple(TensorSpec(n, ("?",) * rank, "float32") for n, rank in wanted.items())
        difference = signature_difference(recorded, contract)
        if difference:
            raise BundleError(
                f"{path / MANIFEST}: the {name} graph's {kind} are not what this runtime "
                f"{'feeds' if kind == 'inputs' else 'reads'} ({difference}); {REEXPORT} from the "
                "same inctrl release"
            )
    return graph


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
            raise BundleError(
                f"{path}: the prior of {category!r} has shape {prior.shape}, the model needs "
                f"(2, {embed_dim}); {REEXPORT}"
            )
    return priors
