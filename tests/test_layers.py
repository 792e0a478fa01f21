"""The import graph (docs/architecture.md, "Layers"), read from the sources: arrows run bench ->
export -> inctrl -> runtime, the runtime imports no torch-side package, ``inctrl`` uses only the
runtime's torch-free base (never onnxruntime, its engines or the Detector), and the Triton
models reach banks through ``references``, never through the Detector."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("torch", "torchvision", "open_clip", "safetensors", "onnx")
# The runtime modules that import neither onnxruntime nor anything heavy.
TORCH_FREE_BASE = {
    "inctrl_runtime",
    "inctrl_runtime.console",
    "inctrl_runtime.datasets",
    "inctrl_runtime.decisions",
    "inctrl_runtime.devices",
    "inctrl_runtime.drift",
    "inctrl_runtime.errors",
    "inctrl_runtime.fewshot",
    "inctrl_runtime.files",
    "inctrl_runtime.heatmap",
    "inctrl_runtime.machine",
    "inctrl_runtime.output",
    "inctrl_runtime.pixel_metrics",
    "inctrl_runtime.preprocess",
    "inctrl_runtime.regions",
    "inctrl_runtime.report",
    "inctrl_runtime.report_charts",
    "inctrl_runtime.results",
    "inctrl_runtime.selection",
    "inctrl_runtime.tiling",
}


def imports(folder: str) -> dict[str, set[str]]:
    """Every module each source file of a folder imports (absolute names, at any depth)."""
    found = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


def top(name: str) -> str:
    return name.split(".")[0]


def test_runtime_imports_no_torch_side_package() -> None:
    forbidden = {*TORCH_SIDE, "inctrl", "inctrl_export", "inctrl_bench"}
    bad = {
        f: sorted(n for n in names if top(n) in forbidden)
        for f, names in imports("runtime").items()
    }
    assert not {f: n for f, n in bad.items() if n}


def test_inctrl_uses_only_the_runtime_torch_free_base() -> None:
    for file, names in imports("inctrl").items():
        runtime = {n for n in names if top(n) == "inctrl_runtime"}
        assert runtime <= TORCH_FREE_BASE, (file, sorted(runtime - TORCH_FREE_BASE))
        assert not {n for n in names if top(n) in ("onnxruntime", "inctrl_export", "inctrl_bench")}


def test_torch_free_base_imports_no_onnxruntime() -> None:
    for file, names in imports("runtime").items():
        parts = Path(file).with_suffix("").parts[1:]  # runtime/triton/models/x.py: not .x
        module = ".".join(("inctrl_runtime", *parts)) if parts[-1] != "__init__" else None
        if module in TORCH_FREE_BASE:
            heavy = {n for n in names if top(n) == "onnxruntime"}
            heavy |= {n for n in names if top(n) == "inctrl_runtime"} - TORCH_FREE_BASE
            assert not heavy, (file, sorted(heavy))


def test_export_imports_no_bench() -> None:
    for file, names in imports("export").items():
        assert not {n for n in names if top(n) == "inctrl_bench"}, file


def test_triton_does_not_import_the_detector() -> None:
    """Nothing under runtime/triton/ imports runtime/detector.py, directly or through another
    module: the served models share the registered banks' home, not the Detector."""
    for file, names in imports("runtime/triton").items():
        assert "inctrl_runtime.detector" not in names, file
    modules = sorted(
        ".".join(("inctrl_runtime", *path.relative_to(ROOT / "runtime").with_suffix("").parts))
        for path in (ROOT / "runtime" / "triton").glob("*.py")
        if path.name != "__init__.py"
    )
    code = textwrap.dedent(
        f"""
        import importlib, sys
        for name in {modules!r}:
            importlib.import_module(name)
        assert "inctrl_runtime.detector" not in sys.modules, "the detector was imported"
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
