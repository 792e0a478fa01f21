"""Write a Triton model repository for a bundle (torch-free: ``inctrl-run serve`` writes one).

    REPO/inctrl/             python: image bytes + category -> scores, decisions, regions; the
                             runtime's decoding and tiling, every category's bank, the head
                             graph, and the encoder called through the server (BLS)
    REPO/inctrl_encoder/     python (the runtime's CPU engine), onnxruntime (model.onnx) or
                             tensorrt (model.plan): shared by every category, batched
    REPO/inctrl/bundle/      with ``copy_bundle``: the bundle's checked files and banks

The python models find the bundle through their ``bundle`` parameter and check it when they
load (the manifest, every file's size, and the sha256 of the files each reads); the entry
checks a model.onnx / model.plan against the manifest too. ``inctrl_export.triton`` writes the
onnxruntime and tensorrt variants with it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from inctrl_runtime.bundle import REFERENCES_DIR, Bundle
from inctrl_runtime.decisions import DEFAULT_FPR, check_fpr
from inctrl_runtime.drift import DEFAULT_DELTA, check_delta
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import staging_folder
from inctrl_runtime.manifest import MANIFEST
from inctrl_runtime.references import load_registered
from inctrl_runtime.triton.configs import (
    DEFAULT_MAX_BATCH,
    check_serving_sizes,
    encoder_config,
    entry_config,
)
from inctrl_runtime.triton.names import (
    BUNDLE_COPY,
    CONFIG,
    ENCODER,
    ENCODER_FILES,
    ENTRY,
    PARAM_BUNDLE,
    PARAM_CATEGORIES,
    PARAM_DRIFT_DELTA,
    PARAM_FPR,
    PARAM_REGION_FPR,
    PARAM_THREADS,
    PYTHON_MODEL,
    VERSION,
)

# Each python model's source in inctrl_runtime.triton.models.
_SOURCES = {ENTRY: "entry.py", ENCODER: "encoder.py"}


def link_or_copy(source: Path, target: Path) -> None:
    """A hard link (no space, no time) where the file system allows it, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def registered_categories(
    bundle: Bundle, categories: Sequence[str] | None, check_banks: bool = True
) -> list[str]:
    """The categories a repository serves from the start: those given, each checked (a text
    prior and a whole registered bank that fits: ``load_registered``'s line names a damaged
    one), or every registered one (None), checked so where ``check_banks`` (a repository that
    copies the banks must not carry a damaged one; one served in place lets a damaged bank fail
    alone, on the requests that name it)."""
    if categories is None:
        categories = sorted(c for c in bundle.categories if bundle.reference_path(c).is_file())
        if not check_banks:
            return categories
    for category in categories:
        bundle.prior(category)
        load_registered(bundle, category, then=" first")
    return list(categories)


def copy_bundle_into(bundle: Bundle, folder: Path, categories: Sequence[str]) -> None:
    """The bundle's manifest, every file it lists, and the banks of ``categories``."""
    (folder / REFERENCES_DIR).mkdir(parents=True)
    shutil.copyfile(bundle.path / MANIFEST, folder / MANIFEST)
    for name in bundle.files:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(bundle.path / name, folder / name)
    for category in categories:
        source = bundle.reference_path(category)
        shutil.copyfile(source, folder / REFERENCES_DIR / source.name)


def write_model(repository: Path, name: str, config: str, source: str | None = None) -> Path:
    """``<name>/config.pbtxt`` and its version folder, with a python model's source in it."""
    version = repository / name / VERSION
    version.mkdir(parents=True)
    (repository / name / CONFIG).write_text(config)
    if source is not None:
        text = resources.files("inctrl_runtime.triton.models").joinpath(source).read_text()
        (version / PYTHON_MODEL).write_text(text)
    return version


def write_repository(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    encoder: str = "python",
    max_batch: int = DEFAULT_MAX_BATCH,
    instances: int = 1,
    categories: Sequence[str] | None = None,
    fpr: float = DEFAULT_FPR,
    region_fpr: float | None = None,
    copy_bundle: bool = False,
    threads: int | None = None,
    encoder_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    drift_delta: float = DEFAULT_DELTA,
) -> Path:
    """Check a bundle and write its Triton repository at ``out``, atomically (built beside it,
    then renamed); returns ``out``.

    Args:
        encoder: ``python`` (the runtime's CPU engine), ``onnxruntime`` (``encoder_file``,
            default the bundle's encoder.onnx, as model.onnx) or ``tensorrt`` (``encoder_file``,
            a plan of the bundle, as model.plan).
        max_batch: every model's ``max_batch_size``; instances: the encoder's and the
            entry's instance count.
        categories: the categories the entry loads at start, each registered (None: every
            registered one; others are read when a request first names them).
        fpr: the false-positive rate of the decisions.
        region_fpr: the rate of good parts that may get any region (None: ``fpr``).
        copy_bundle: copy the bundle into ``inctrl/bundle`` (a repository that travels);
            otherwise the models read the bundle where it is (its absolute path).
        threads: intra-op threads per engine instance (None: onnxruntime's default).
        overwrite: replace an existing non-empty ``out`` (refused otherwise).
        drift_delta: the false-alarm probability of every calibrated category's drift monitor
            (kept in the bundle the entry reads: an exported repository's copy has its own).
    """
    checked = Bundle.open(bundle, check_files=True)
    check_serving_sizes(max_batch, instances)
    check_fpr(fpr)
    check_delta(drift_delta)
    region_fpr = fpr if region_fpr is None else check_fpr(region_fpr, "--region-fpr")
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be at least 1, got {threads}")
    if encoder == "tensorrt" and encoder_file is None:
        raise InputError("a tensorrt encoder needs its plan: give encoder_file")
    serving = registered_categories(checked, categories, check_banks=copy_bundle)
    target = Path(out)
    if target.exists() and not overwrite and (not target.is_dir() or any(target.iterdir())):
        raise InputError(f"{target}: exists and is not empty; name a new folder or remove it")
    where = f"{ENTRY}/{BUNDLE_COPY}" if copy_bundle else str(checked.path.resolve())
    parameters = {
        PARAM_BUNDLE: where,
        PARAM_FPR: repr(float(fpr)),
        PARAM_REGION_FPR: repr(float(region_fpr)),
        PARAM_THREADS: "" if threads is None else str(threads),
    }
    with staging_folder(target) as staging:
        repository = staging / "repository"
        repository.mkdir()
        entry = {
            **parameters,
            PARAM_CATEGORIES: ",".join(serving),
            PARAM_DRIFT_DELTA: repr(float(drift_delta)),
        }
        write_model(repository, ENTRY, entry_config(max_batch, instances, entry), _SOURCES[ENTRY])
        python = encoder == "python"
        version = write_model(
            repository, ENCODER,
            encoder_config(checked, encoder, max_batch, instances, parameters if python else None),
            _SOURCES[ENCODER] if python else None,
        )  # fmt: skip
        if not python:
            model = encoder_file or checked.graphs["encoder"].file
            link_or_copy(Path(model), version / ENCODER_FILES[encoder])
        if copy_bundle:
            copy_bundle_into(checked, repository / ENTRY / BUNDLE_COPY, serving)
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(repository, target)
    return target
