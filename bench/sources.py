"""What each backend runs: the checkpoint of the torch backends and a bundle of each precision
for the runtime ones, made on demand (torch only then) in a temporary folder.

- BUNDLE given: used as it is by the runtime backends of its precision. The torch rows load
  ``--checkpoint`` (checked against the sha256 the bundle records), the embedded demo for a
  demo bundle, or else are unavailable: a bundle names its source by file name only.
- No BUNDLE: the torch side loads ``--checkpoint``, the seeded ``--preset`` model or the
  embedded demo; bundles are exported from the same file.
"""

from __future__ import annotations

from pathlib import Path

from inctrl_bench.backends import Unavailable, import_problem
from inctrl_bench.timing import Progress
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import file_sha256

# The category whose text prior is used when no bundle names one (any name works for a model).
DEFAULT_CATEGORY = "candle"


class Sources:
    """The files behind every backend; ``workdir`` holds what is made on demand."""

    def __init__(
        self,
        workdir: Path,
        bundle: Path | None = None,
        checkpoint: Path | None = None,
        preset: str | None = None,
        seed: int = 0,
        progress: Progress | None = None,
    ) -> None:
        _check_inputs(bundle, checkpoint, preset)
        self.workdir, self.preset, self.seed = workdir, preset, seed
        self.checkpoint_given = checkpoint
        self.progress = progress or Progress()
        self.notes: list[str] = []
        self._checkpoint: Path | None | Unavailable = checkpoint
        self._bundles: dict[str, Path | Unavailable] = {}
        self.given_bundle = None
        self.category = DEFAULT_CATEGORY
        if bundle is not None:
            self._open_given(bundle)

    def _open_given(self, path: Path) -> None:
        from inctrl_runtime.bundle import Bundle

        # Only the manifest is read here; the Detector that benches it checks every sha256.
        bundle = self.given_bundle = Bundle.open(path, check_files=False)
        self.category = bundle.categories[0]
        self._bundles = {bundle.graphs["encoder"].precision: path}
        source = bundle.manifest.get("source") or {}
        if self.checkpoint_given is not None:
            self._check_against(path, source.get("sha256"))
        elif not source.get("demo"):  # a demo bundle's torch rows load the embedded demo
            # A schema-1 manifest records the exporting machine's path: only its name is used.
            name = source.get("file") or Path(source.get("checkpoint") or "").name
            origin = f"was exported from {name}" if name else "names no source checkpoint"
            self._checkpoint = Unavailable(f"give --checkpoint (the bundle {origin})")

    def _check_against(self, bundle: Path, sha256: str | None) -> None:
        """Note when --checkpoint is not (or cannot be shown to be) the bundle's source."""
        if sha256 is None:
            self.notes.append(
                f"{bundle} records no source checkpoint: the torch rows may measure other "
                "weights than the onnxruntime rows"
            )
        elif file_sha256(self.checkpoint_given) != sha256:
            self.notes.append(
                f"{self.checkpoint_given} is not the checkpoint {bundle} was exported from "
                "(sha256 differs from its manifest): the torch and onnxruntime rows measure "
                "different weights"
            )

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

    @property
    def model_label(self) -> str:
        """What is benched, in words."""
        if self.preset is not None:
            return f"preset {self.preset}, seeded random weights (seed {self.seed})"
        if self.checkpoint_given is not None:
            return str(self.checkpoint_given)
        if self.given_bundle is not None:
            return f"bundle {self.given_bundle.path}"
        return "the embedded DEMO model"


def _check_inputs(bundle: Path | None, checkpoint: Path | None, preset: str | None) -> None:
    """Refuse contradictory or missing inputs before any work."""
    if preset is not None:
        if bundle is not None or checkpoint is not None:
            raise InputError(
                "--preset builds its own model: give it without BUNDLE or --checkpoint"
            )
        from inctrl.config import get_config

        get_config(preset)  # an unknown preset is refused here
    if checkpoint is not None and not checkpoint.is_file():
        raise InputError(f"{checkpoint}: no such checkpoint file")
