"""The TensorRT builder proper: ONNX graphs -> serialized plans, with one timing cache.

Everything here that calls TensorRT keeps to ``inctrl_export.tensorrt.BUILDER_API``, names that
TensorRT 10 and 11 both document (a test checks the list against this file and against the names
the installed TensorRT 11 bindings define). The runner is elsewhere
(``inctrl_runtime.engines.tensorrt``), as in TensorRT's samples (``common_runtime.py``).

Importing this module imports the full TensorRT module (``tensorrt``, else ``tensorrt_bindings``)
and raises ImportError, with each import's reason, where it is missing or has no builder.

    builder = PlanBuilder(cached)        # cached: a serialized timing cache, or b""
    plan = builder.build(Path("encoder.onnx"), "fp16", profiles, PlanSettings())
    cache = builder.timing_cache()        # to write back for the next build
"""

from __future__ import annotations

import collections
import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from inctrl_export.tensorrt_graph import parser_graph
from inctrl_runtime.engines.tensorrt.plans import Profile
from inctrl_runtime.errors import InputError

BUILDER_MODULES = ("tensorrt", "tensorrt_bindings")
OLDEST_MAJOR = 10  # strongly typed networks; named I/O tensors
# The last messages TensorRT logged at WARNING or worse, quoted when a build fails.
KEPT_MESSAGES = 5
# Graphs whose float32 arithmetic stays IEEE fp32 (TF32 off): fp32 ones (the 1e-4 contract) and
# int8 ones, whose unquantized parts (attention's products, the projection, the adapter) were
# kept fp32 because the score is sensitive to them (onnxruntime computes them in fp32).
NO_TF32 = ("fp32", "int8")


def _import_builder() -> ModuleType:
    """The first of ``BUILDER_MODULES`` that imports and has a builder of TensorRT 10 or newer."""
    reasons = []
    for name in BUILDER_MODULES:
        try:
            module = importlib.import_module(name)
        except (ImportError, OSError) as err:
            reasons.append(f"import {name}: {err}")
            continue
        version = str(getattr(module, "__version__", "unknown"))
        major = version.split(".")[0]
        if not hasattr(module, "Builder"):
            reasons.append(f"{name} {version} has no Builder (a runtime-only TensorRT)")
        elif not major.isdigit() or int(major) < OLDEST_MAJOR:
            reasons.append(f"{name} {version} is older than TensorRT {OLDEST_MAJOR}")
        else:
            return module
    raise ImportError("; ".join(reasons))


trt = _import_builder()
VERSION = str(trt.__version__)
MAJOR = int(VERSION.split(".")[0])
_KEPT = (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR)


class BuildError(InputError):
    """TensorRT could not parse a graph or build a plan: one line that quotes TensorRT."""


class KeptLogger(trt.ILogger):
    """TensorRT's logger that keeps the last errors and warnings, for one-line messages."""

    def __init__(self) -> None:
        trt.ILogger.__init__(self)
        self.errors: collections.deque[str] = collections.deque(maxlen=KEPT_MESSAGES)
        self.warnings: collections.deque[str] = collections.deque(maxlen=KEPT_MESSAGES)

    def log(self, severity, msg: str) -> None:
        if severity in _KEPT:
            self.errors.append(msg.strip())
        elif severity == trt.ILogger.Severity.WARNING:
            self.warnings.append(msg.strip())

    def last_words(self) -> str:
        """The last errors logged (the last warnings where there were none), on one line."""
        kept = self.errors or self.warnings
        return " | ".join(kept) if kept else "TensorRT logged no error"


@dataclass(frozen=True)
class PlanSettings:
    """How an export's plans are built: the workspace limit in MiB (None: TensorRT's default,
    the GPU's memory), and whether they are version-compatible (then without the lean runtime
    inside: the lean runtime of this TensorRT runs them)."""

    workspace_mib: int | None = None
    version_compatible: bool = False


class PlanBuilder:
    """One TensorRT builder and timing cache for the plans of one export."""

    def __init__(self, timing_cache: bytes = b"") -> None:
        """``timing_cache``: a serialized cache to start from (b"": a new one)."""
        self.logger = KeptLogger()
        self.builder = trt.Builder(self.logger)
        self.cached = timing_cache
        self.cache = None  # made from ``cached`` by the first build's config
        self.notes: list[str] = []  # what a person should know about the build (a stale cache)

    def build(
        self,
        onnx_file: Path,
        precision: str,
        profiles: Mapping[str, Profile],
        settings: PlanSettings,
    ) -> bytes:
        """The serialized plan of ``onnx_file``, a graph of ``precision`` (the network is
        strongly typed: the plan computes in the graph's types, int8 where its Q/DQ nodes say;
        ``NO_TF32`` ones without TF32), with one optimization profile (input name -> min, opt,
        max shapes); BuildError quoting TensorRT when it cannot be built. The parser reads the
        graph as ``parser_graph`` gives it (int32 biases of Q/DQ graphs dequantized)."""
        builder = self.builder
        network = builder.create_network(_network_flags())
        parser = trt.OnnxParser(network, self.logger)
        if not parser.parse(parser_graph(onnx_file), str(onnx_file)):
            errors = [parser.get_error(i) for i in range(parser.num_errors)]
            found = "; ".join(f"{error.desc()} (node {error.node()})" for error in errors)
            raise BuildError(f"{onnx_file}: TensorRT cannot parse it: {found or 'no details'}")
        config = builder.create_builder_config()
        if settings.workspace_mib is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
        if precision in NO_TF32:
            config.clear_flag(trt.BuilderFlag.TF32)
        if settings.version_compatible:
            config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
            config.set_flag(trt.BuilderFlag.EXCLUDE_LEAN_RUNTIME)
        profile = builder.create_optimization_profile()
        for name, (low, opt, high) in profiles.items():
            profile.set_shape(name, low, opt, high)
        config.add_optimization_profile(profile)
        self._use_timing_cache(config)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            words = self.logger.last_words()
            raise BuildError(f"{onnx_file}: TensorRT could not build a plan: {words}")
        return bytes(memoryview(plan))

    def _use_timing_cache(self, config) -> None:
        """Give ``config`` this export's timing cache (kept alive: TensorRT reads and fills it
        while it builds), made by the first build from the serialized one."""
        if self.cache is None:
            self.cache = self._first_timing_cache(config)
        config.set_timing_cache(self.cache, ignore_mismatch=False)

    def _first_timing_cache(self, config):
        """The serialized cache, or a new one where TensorRT refuses it (made on another GPU or
        TensorRT, or damaged: a note says so)."""
        if self.cached:
            try:
                cache = config.create_timing_cache(self.cached)
            except RuntimeError:  # damaged bytes: the binding may raise rather than return None
                cache = None
            if cache is not None and config.set_timing_cache(cache, ignore_mismatch=False):
                return cache
            self.notes.append(
                "the timing cache does not fit this GPU and TensorRT (made on another, or "
                "damaged): a new one replaces it"
            )
        return config.create_timing_cache(b"")

    def timing_cache(self) -> bytes:
        """The timing cache as the builds left it, serialized (b"" before any build)."""
        cache = self.cache
        return b"" if cache is None else bytes(memoryview(cache.serialize()))


def _network_flags() -> int:
    """Strongly typed networks: a flag in TensorRT 10, always on (the flag deprecated) in 11."""
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if MAJOR == 10 else 0
