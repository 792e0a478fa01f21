"""What the python models of a repository do, as plain classes on numpy arrays.

Triton hands a python model's ``execute`` the list of requests its dynamic batcher gathered;
each stage takes their inputs (one dict of arrays per request, rows along axis 0) and replies
to each request with its outputs or the one-line ``InputError`` that refuses it, so that a bad
request fails alone. Stages run as ONE engine call over all rows of all requests and split the
outputs again (``concatenate`` / ``split``). Nothing here imports Triton: ``backend`` does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.decisions import DEFAULT_FPR, check_fpr
from inctrl_runtime.drift import DEFAULT_DELTA, check_delta
from inctrl_runtime.engines import Engine, check_signature
from inctrl_runtime.engines.ort import OrtEngine, place
from inctrl_runtime.errors import InputError
from inctrl_runtime.triton.names import (
    PARAM_BUNDLE,
    PARAM_CATEGORIES,
    PARAM_DRIFT_DELTA,
    PARAM_FPR,
    PARAM_REGION_FPR,
    PARAM_THREADS,
)

Feeds = dict[str, np.ndarray]
Reply = Feeds | InputError  # a stage's reply to one request: its outputs, or why it is refused


class Stage(Protocol):
    """One python model: the inputs it reads (and ``optional`` ones, where it has some: a
    request that leaves one out has no array of that name), and ``run`` over a batch of
    requests."""

    inputs: tuple[str, ...]

    def run(self, requests: Sequence[Feeds]) -> list[Reply]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelArgs:
    """What Triton tells a python model when it loads: its folder and its config parameters."""

    folder: Path  # <repository>/<model>
    parameters: dict[str, str]
    max_batch: int  # the model's max_batch_size

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> ModelArgs:
        """From ``TritonPythonModel.initialize``'s ``args`` (the config as JSON)."""
        config = json.loads(args["model_config"])
        parameters = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        return cls(Path(args["model_repository"]), parameters, int(config["max_batch_size"]))

    @property
    def root(self) -> Path:
        """The repository's root folder."""
        return self.folder.parent

    def bundle(self, reads: Callable[[Bundle], Iterable[str]] = lambda bundle: ()) -> Bundle:
        """The bundle the ``bundle`` parameter names (relative: to the repository's root),
        checked, with the sha256 of the files the model ``reads`` (each model instance hashes
        only what it reads: the encoder is by far the largest file)."""
        named = self.parameters.get(PARAM_BUNDLE)
        if not named:
            raise InputError(f"{self.folder}: its config names no {PARAM_BUNDLE!r} parameter")
        path = Path(named)
        bundle = Bundle.open(path if path.is_absolute() else self.root / path, check_files=False)
        bundle.check_sha256(reads(bundle))
        return bundle

    @property
    def threads(self) -> int | None:
        text = self.parameters.get(PARAM_THREADS, "")
        return int(text) if text else None

    @property
    def fpr(self) -> float:
        text = self.parameters.get(PARAM_FPR, "")
        return check_fpr(float(text)) if text else DEFAULT_FPR

    @property
    def region_fpr(self) -> float:
        """The rate of good parts that may get any region (no parameter: ``fpr``)."""
        text = self.parameters.get(PARAM_REGION_FPR, "")
        return check_fpr(float(text), "--region-fpr") if text else self.fpr

    @property
    def drift_delta(self) -> float:
        """The drift monitor's false-alarm probability (no parameter: the default)."""
        text = self.parameters.get(PARAM_DRIFT_DELTA, "")
        return check_delta(float(text)) if text else DEFAULT_DELTA

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(c for c in self.parameters.get(PARAM_CATEGORIES, "").split(",") if c)


def open_graph(bundle: Bundle, graph: str, threads: int | None) -> Engine:
    """One of the bundle's graphs on onnxruntime's CPU provider, checked against the manifest
    (the engine seam's CPU engine; the encoder and the head live in separate models)."""
    record = bundle.graphs[graph]
    engine = OrtEngine.open(record.file, place("cpu"), threads, True, record.precision)
    check_signature(engine, record)
    return engine


def concatenate(requests: Sequence[Feeds], names: Sequence[str]) -> tuple[Feeds, list[slice]]:
    """The requests' inputs ``names`` joined along the batch axis, and each request's rows."""
    edges = np.cumsum([0, *(len(request[names[0]]) for request in requests)])
    rows = [slice(int(start), int(stop)) for start, stop in zip(edges[:-1], edges[1:], strict=True)]
    return {name: np.concatenate([r[name] for r in requests]) for name in names}, rows


def split(outputs: Feeds, rows: Sequence[slice]) -> list[Feeds]:
    """Each request's rows of the joined outputs (``concatenate``'s ``rows``)."""
    return [{name: array[part] for name, array in outputs.items()} for part in rows]


def texts(column: np.ndarray, what: str) -> list[str]:
    """A STRING input's rows (N x 1 bytes objects) as utf-8 text."""
    try:
        return [bytes(item).decode("utf-8") for item in column.reshape(-1)]
    except UnicodeDecodeError:
        raise InputError(f"the {what} is not utf-8 text") from None


class EncoderStage:
    """The encoder shared by every category: one engine run over every request's rows."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.inputs = tuple(spec.name for spec in engine.inputs)

    @classmethod
    def open(cls, args: Mapping[str, str]) -> EncoderStage:
        parsed = ModelArgs.parse(args)
        bundle = parsed.bundle(reads=lambda bundle: [bundle.graphs["encoder"].file.name])
        return cls(open_graph(bundle, "encoder", parsed.threads))

    def run(self, requests: Sequence[Feeds]) -> list[Reply]:
        feeds, rows = concatenate(requests, self.inputs)
        return split(self.engine.run(feeds), rows)

    def close(self) -> None:
        self.engine.close()
