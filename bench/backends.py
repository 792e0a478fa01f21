"""The backends inctrl-bench knows, how ``--backend`` selects them, why one cannot run here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from inctrl_bench.machine import Progress, import_problem
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import file_sha256

# The category whose text prior is used when no bundle names one (any name works for a model).
DEFAULT_CATEGORY = "candle"


class Unavailable(Exception):
    """A backend that cannot run here; the message says why."""


@dataclass(frozen=True)
class Backend:
    """One way of running InCTRL: ``authors`` and ``torch`` run the PyTorch model (on
    ``--device`` unless ``device`` is set), ``onnxruntime`` and ``tensorrt`` a bundle through
    ``inctrl_runtime.Detector`` on ``runtime_device``. ``precision`` is the encoder's."""

    name: str
    kind: str
    precision: str
    device: str | None = None
    runtime_device: str | None = None

    @property
    def uses_torch(self) -> bool:
        return self.kind in ("authors", "torch")


CATALOGUE = (
    Backend("authors", "authors", "fp32"),
    Backend("torch-fp32", "torch", "fp32"),
    Backend("torch-bf16", "torch", "bf16"),
    Backend("torch-fp16", "torch", "fp16", "cuda"),
    Backend("onnxruntime-cpu-fp32", "onnxruntime", "fp32", "cpu", "cpu"),
    Backend("onnxruntime-cpu-int8", "onnxruntime", "int8", "cpu", "cpu"),
    Backend("onnxruntime-cuda-fp32", "onnxruntime", "fp32", "cuda", "cuda"),
    Backend("onnxruntime-cuda-fp16", "onnxruntime", "fp16", "cuda", "cuda"),
    # onnxruntime's TensorRT execution provider, the runtime's way to TensorRT for now.
    Backend("tensorrt", "tensorrt", "fp32", "cuda", "tensorrt"),
)


def select_backends(patterns: Sequence[str]) -> list[Backend]:
    """The backends named by name, prefix or comma-separated list, in catalogue order; or all."""
    if not patterns:
        return list(CATALOGUE)
    names, chosen = [b.name for b in CATALOGUE], set()
    for pattern in (part.strip() for value in patterns for part in value.split(",")):
        matches = {name for name in names if name.startswith(pattern)}
        if not pattern or not matches:
            raise InputError(
                f"unknown backend {pattern!r}; give a name or prefix of {', '.join(names)}"
            )
        chosen |= matches
    return [b for b in CATALOGUE if b.name in chosen]


def _problem(backend: Backend, device: str) -> str | None:
    """The missing library or hardware that keeps a backend from running on ``device``."""
    if backend.uses_torch:
        problem = import_problem("torch", "inctrl.model")
        if problem is not None or device != "cuda":
            return problem
        import torch

        if not torch.cuda.is_available():
            return "torch sees no CUDA GPU"
        if backend.precision == "bf16" and not torch.cuda.is_bf16_supported():
            return f"this GPU ({torch.cuda.get_device_name()}) has no bf16 arithmetic"
        return None
    problem = import_problem("onnxruntime")
    if problem is None:
        from inctrl_runtime.engines.ort import place

        try:
            place(backend.runtime_device or "cpu", strict=True)
        except InputError as err:
            problem = str(err)
    return problem


def check_runnable(backend: Backend, device: str) -> None:
    """Raise ``Unavailable`` with what keeps a backend from running here with ``--device``."""
    found = [import_problem("tensorrt")] if backend.kind == "tensorrt" else []
    found = [p for p in [*found, _problem(backend, backend.device or device)] if p is not None]
    if not found and backend.device is not None and backend.device != device:
        found.append(f"runs on {backend.device}: bench with --device {backend.device}")
    if found:
        raise Unavailable("; ".join(found))


class Sources:
    """What each backend runs, made on demand in ``workdir``: the torch rows a checkpoint
    (``--checkpoint``, ``--preset``'s or the demo), the runtime rows a bundle of each precision
    exported from it, or the given BUNDLE (its precision only)."""

    def __init__(
        self,
        workdir: Path,
        bundle: Path | None = None,
        checkpoint: Path | None = None,
        preset: str | None = None,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        if preset is not None and (bundle is not None or checkpoint is not None):
            raise InputError("--preset builds its own model: drop BUNDLE and --checkpoint")
        if preset is not None:
            from inctrl.config import get_config

            get_config(preset)  # an unknown preset is refused here
        if checkpoint is not None and not checkpoint.is_file():
            raise InputError(f"{checkpoint}: no such checkpoint file")
        self.workdir, self.preset, self.seed = workdir, preset, seed
        self.progress = progress or Progress()
        self.notes: list[str] = []
        self.category = DEFAULT_CATEGORY
        self.model_label = str(checkpoint) if checkpoint else "the embedded DEMO model"
        if preset is not None:
            self.model_label = f"preset {preset}, seeded random weights (seed {seed})"
        # What each side runs once known: a file, None (the embedded demo), or why there is none.
        self._checkpoint: Path | None | Unavailable = checkpoint
        self._bundles: dict[str, Path | Unavailable] = {}
        self.given_bundle = None
        if bundle is not None:
            self._open_given(bundle, checkpoint)

    def _open_given(self, path: Path, given: Path | None) -> None:
        from inctrl_runtime.bundle import Bundle

        # Only the manifest is read here; the Detector that benches it checks every sha256.
        bundle = self.given_bundle = Bundle.open(path, check_files=False)
        self.category = bundle.categories[0]
        self._bundles = {bundle.graphs["encoder"].precision: path}
        source = bundle.manifest.get("source") or {}
        if given is not None and source.get("sha256") != file_sha256(given):
            why = "it records none" if source.get("sha256") is None else "the sha256 differs"
            self.notes.append(
                f"{given} is not the checkpoint {path} was exported from ({why}): the torch and "
                "onnxruntime rows may measure different weights"
            )
        elif given is None:
            self.model_label = f"bundle {bundle.path}"
            if not source.get("demo"):  # a demo bundle runs the embedded demo
                name = bundle.source_file
                origin = f"was exported from {name}" if name else "names no source checkpoint"
                self._checkpoint = Unavailable(f"give --checkpoint (the bundle {origin})")

    def checkpoint(self) -> Path | None:
        """The checkpoint of the torch side (None: the embedded demo)."""
        if self.preset is not None and self._checkpoint is None:
            self.progress.step(f"building {self.preset} with seeded random weights")
            from inctrl_bench.torch_side import save_preset_checkpoint

            path = self.workdir / f"{self.preset}-seed{self.seed}.safetensors"
            self._checkpoint = save_preset_checkpoint(self.preset, path, self.seed)
        if isinstance(self._checkpoint, Unavailable):
            raise self._checkpoint
        return self._checkpoint

    def bundle(self, precision: str) -> Path:
        """The bundle with the encoder at ``precision``, exported on first use."""
        if precision not in self._bundles:
            self._bundles[precision] = self._export(precision)
        found = self._bundles[precision]
        if isinstance(found, Unavailable):
            raise found
        return found

    def _export(self, precision: str) -> Path | Unavailable:
        if self.given_bundle is not None:
            given = self.given_bundle.graphs["encoder"].precision
            return Unavailable(
                f"the given bundle's encoder is {given}; bench a {precision} bundle "
                f"(inctrl-export onnx --precision {precision}) for this one"
            )
        problem = import_problem("torch", "inctrl_export.bundle")
        if problem is not None:
            return Unavailable(f"no BUNDLE given, and exporting one needs torch: {problem}")
        from inctrl_export.bundle import export_bundle

        checkpoint = self.checkpoint()
        self.progress.step(f"exporting a {precision} bundle")
        out = self.workdir / f"bundle-{precision}"
        try:
            # No self-check: the bench compares the backends' speed, not their outputs.
            export_bundle(out, checkpoint, [self.category], precision=precision, verify=False)
        except InputError as err:
            return Unavailable(f"inctrl-export cannot make a {precision} bundle: {err}")
        return out
