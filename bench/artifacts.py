"""What each benched backend runs, made on demand: the torch rows' checkpoint, the runtime rows'
bundles of each precision, and the tensorrt rows' plans (the catalogue of backends is
``inctrl_bench.backends``)."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from inctrl_bench.backends import GPU_INDEX, Unavailable, random_frames
from inctrl_bench.machine import Progress, import_problem
from inctrl_runtime.errors import BundleError, InputError
from inctrl_runtime.files import file_sha256

if TYPE_CHECKING:
    from inctrl_bench.accuracy import EvalData
    from inctrl_runtime.engines.tensorrt.plans import Build

# The category whose text prior is used when no bundle names one (any name works for a model).
DEFAULT_CATEGORY = "candle"
# Without --eval, an int8 export of a real checkpoint is calibrated on this many random frames.
CALIBRATION_FRAMES = 16


class RowSource(NamedTuple):
    """What one row runs: a checkpoint (None: the demo) or a bundle, and for the tensorrt kind
    the key of the TensorRT build whose plans run (else None)."""

    path: Path | None
    build: str | None


class Artifacts:
    """What each backend runs, made on demand in ``workdir``: the torch rows a checkpoint
    (``--checkpoint``, ``--preset``'s or the demo), the runtime rows a bundle of each precision
    exported from it (for ``data``'s categories where given; int8 calibrated on its train/good
    images, ``keep_fp32``'s block products left in fp32), or the given BUNDLE (its precision
    only), and the tensorrt rows that bundle's TensorRT plans, built here when it has none
    this GPU runs."""

    def __init__(
        self,
        workdir: Path,
        bundle: Path | None = None,
        checkpoint: Path | None = None,
        preset: str | None = None,
        seed: int = 0,
        progress: Progress | None = None,
        data: EvalData | None = None,
        keep_fp32: Sequence[str] = (),
    ) -> None:
        if preset is not None and (bundle is not None or checkpoint is not None):
            raise InputError("--preset builds its own model: drop BUNDLE and --checkpoint")
        if preset is not None:
            from inctrl.config import get_config

            get_config(preset)  # an unknown preset is refused here
        if checkpoint is not None and not checkpoint.is_file():
            raise InputError(f"{checkpoint}: no such checkpoint file")
        self.workdir, self.preset, self.seed, self.data = workdir, preset, seed, data
        self.keep_fp32 = tuple(keep_fp32)  # the int8 export's split (``--keep-fp32``)
        self.progress = progress or Progress()
        self.notes: list[str] = []
        self.categories = [c.name for c in data.categories] if data else [DEFAULT_CATEGORY]
        self.category = self.categories[0]
        self.model_label = str(checkpoint) if checkpoint else "the embedded DEMO model"
        if preset is not None:
            self.model_label = f"preset {preset}, seeded random weights (seed {seed})"
        # What each side runs once known: a file, None (the embedded demo), or why there is none.
        self._checkpoint: Path | None | Unavailable = checkpoint
        self._bundles: dict[str, Path | Unavailable] = {}
        self._engines: dict[tuple, RowSource | Unavailable] = {}
        self.given_bundle = None
        if bundle is not None:
            self._open_given(bundle, checkpoint)

    def _open_given(self, path: Path, given: Path | None) -> None:
        from inctrl_runtime.bundle import Bundle

        # Only the manifest is read here; the Detector that benches it checks every sha256.
        bundle = self.given_bundle = Bundle.open(path, check_files=False)
        missing = [name for name in self.categories if name not in bundle.categories]
        if self.data is not None and missing:
            raise InputError(
                f"{path}: has no text prior for the --eval data's {', '.join(missing)} (it has "
                f"{', '.join(bundle.categories)}); export them "
                "(inctrl-export onnx --category NAME ...) or give --eval data of its categories"
            )
        if self.data is None:
            self.category = bundle.categories[0]
        self._bundles = {bundle.graphs["encoder"].precision: path}
        source = bundle.source
        if given is not None and source.sha256 != file_sha256(given):
            why = "it records none" if source.sha256 is None else "the sha256 differs"
            self.notes.append(
                f"{given} is not the checkpoint {path} was exported from ({why}): the torch and "
                "onnxruntime rows may measure different weights"
            )
        elif given is None:
            self.model_label = f"bundle {bundle.path}"
            if not source.demo:  # a demo bundle runs the embedded demo
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
            # No self-check: the bench compares the backends' speed (and with --eval, accuracy).
            export_bundle(
                out,
                checkpoint,
                self.categories,
                precision=precision,
                verify=False,
                calibration=self._calibration(checkpoint) if precision == "int8" else None,
                keep_fp32=self.keep_fp32 if precision == "int8" else (),
            )
        except InputError as err:
            return Unavailable(f"inctrl-export cannot make a {precision} bundle: {err}")
        return out

    def _calibration(self, checkpoint: Path | None) -> list[str] | list[np.ndarray] | None:
        """The int8 export's calibration images: None for the demo (its own synthetic normals),
        else --eval's train/good images, else seeded random frames (noted)."""
        if checkpoint is None:
            return None
        if self.data is not None:
            return self.data.normal_images()
        self.notes.append(
            f"the int8 bundle is calibrated on {CALIBRATION_FRAMES} random camera frames (no "
            "--eval data): random-frame calibration makes its scores' accuracy meaningless; its "
            "speed stands"
        )
        return random_frames(np.random.default_rng(self.seed), CALIBRATION_FRAMES)

    def engines(
        self, precision: str, batch: tuple[int, int, int], shots: tuple[int, int, int]
    ) -> RowSource:
        """A bundle with ``precision`` TensorRT plans that this GPU runs at batch ``batch[0]``
        with ``shots[0]`` prompts, and the key of that build (a ``RowSource``): the given
        BUNDLE's, or else built (``batch`` and ``shots`` as min/opt/max) into a bundle of the
        bench's own."""
        wanted = (precision, batch, shots)
        if wanted not in self._engines:
            self._engines[wanted] = self._find_engines(*wanted)
        found = self._engines[wanted]
        if isinstance(found, Unavailable):
            raise found
        return found

    def _find_engines(
        self, precision: str, batch: tuple[int, int, int], shots: tuple[int, int, int]
    ) -> RowSource | Unavailable:
        path = self.bundle(precision)
        try:
            build = _usable_build(path, precision, batch[0], shots[0])
        except InputError as err:
            why = str(err)
        else:
            if build.batch[2] < batch[2]:
                self.notes.append(
                    f"{path}: TensorRT build {build.key} ends at batch {build.batch[2]}: larger "
                    "batches run in pieces"
                )
            return RowSource(path, build.key)
        problem = import_problem("inctrl_export.tensorrt")
        if problem is None:
            from inctrl_export.tensorrt import builder_problem

            problem = builder_problem()
        if problem is not None:
            return Unavailable(f"{why}; {problem}")
        from inctrl_export.tensorrt import build_engines

        target = path
        if self.given_bundle is not None:  # a given bundle is never written to
            target = _copy_without_engines(path, self.workdir / f"bundle-{precision}-tensorrt")
        checkpoint = None if isinstance(self._checkpoint, Unavailable) else self._checkpoint
        self.progress.step(f"building {precision} TensorRT engines")
        try:
            # No self-check: the bench compares the backends' speed, not their outputs.
            built = build_engines(
                target, checkpoint, batch=batch, shots=shots, verify=False, log=self.progress.step
            )
        except InputError as err:
            return Unavailable(f"inctrl-export tensorrt cannot build {precision} engines: {err}")
        if target != path:
            self.notes.append(
                f"{path} has no {precision} TensorRT plans that run here at batch {batch[0]}, "
                f"k={shots[0]}: the bench built them in a temporary copy"
            )
        return RowSource(target, built.build.key)


def engine_profile(
    batches: Sequence[int], shots: Sequence[int]
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The (min, opt, max) batch and prompt counts of the plans the bench builds, from its sorted
    ``--batch`` and ``--shots``: batch 1 (its latency) up to the largest batch or k it encodes,
    tuned for the middle batch size; k from the one queries use (also the tuned one) up."""
    batch = (1, batches[len(batches) // 2], max(batches[-1], shots[-1]))
    return batch, (shots[0], shots[0], shots[-1])


def _usable_build(bundle: Path, precision: str, batch: int, shots: int) -> Build:
    """The bundle's first TensorRT build that this GPU and a TensorRT runtime here can run, at
    ``batch`` images with ``shots`` prompts; ``BundleError`` says why there is none."""
    from inctrl_runtime.bundle import Bundle
    from inctrl_runtime.engines.tensorrt.plans import choose_build, require_builds

    builds = Bundle.open(bundle, check_files=False).builds
    require_builds(builds, bundle)
    covering = {
        key: build
        for key, build in builds.items()
        if build.batch[0] <= batch and build.shots[0] <= shots <= build.shots[2]
    }
    if not covering:
        raise BundleError(
            f"{bundle}: its TensorRT builds ({', '.join(builds)}) do not run batch {batch} with "
            f"k={shots} prompts"
        )
    from inctrl_runtime.engines.tensorrt.cuda import compute_capability
    from inctrl_runtime.engines.tensorrt.runtimes import tensorrt_runtimes

    capability, runtimes = compute_capability(GPU_INDEX), tensorrt_runtimes()
    return choose_build(covering, bundle, precision, capability, runtimes)[0]


def _copy_without_engines(bundle: Path, copy: Path) -> Path:
    """A copy of a bundle with no TensorRT plans or record of any, for the bench to build in."""
    from inctrl_runtime.engines.tensorrt.plans import ENGINES_DIR
    from inctrl_runtime.manifest import drop_builds

    shutil.copytree(bundle, copy, ignore=lambda f, _: [ENGINES_DIR] if Path(f) == bundle else [])
    drop_builds(copy)
    return copy
