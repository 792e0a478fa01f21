"""The names the native TensorRT runner uses, checked against the real installed modules: every
TensorRT name against the lean runtime (and the full bindings' compiled names), every CUDA name
against ``cuda.bindings``, and an AST scan proving the runner uses no names but those listed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from inctrl_runtime.engines.tensorrt import cuda as cuda_module
from inctrl_runtime.engines.tensorrt.cuda import CUDA_API, gpu_problem
from inctrl_runtime.engines.tensorrt.runtimes import TRT_RUNNER_API, tensorrt_runtimes

RUNNER = Path(cuda_module.__file__).parent
LEAN = "tensorrt_lean_bindings"
NO_GPU = gpu_problem(0)


# -------------------------------------------------------- the names the runner uses, checked
def api_used(paths: list[Path], receivers: dict[str, str], calls: tuple[str, ...] = ()) -> set:
    """(owner, name) for every attribute read on a TensorRT or CUDA object in ``paths``: on a
    name (or ``self.`` attribute) in ``receivers`` (name -> owner; "module" for the module),
    on a call of a function in ``calls`` (it returns the module), along dotted chains
    (``trt.ILogger.ERROR``), the first argument of ``_call("cudaX", ...)``, and the methods a
    class derived from a TensorRT class overrides."""

    def owner(node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return receivers.get(node.id.lstrip("_"))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            return "module" if node.func.id in calls else None
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == "self":
                return receivers.get(node.attr.lstrip("_"))
            parent = owner(node.value)
            if parent is None:
                return None
            return node.attr if parent == "module" else f"{parent}.{node.attr}"
        return None

    used = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and owner(node.value) is not None:
                used.add((owner(node.value), node.attr))
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_call":
                used.add(("module", node.args[0].value))
            elif isinstance(node, ast.ClassDef):
                for base in filter(None, map(owner, node.bases)):
                    methods = [f.name for f in node.body if isinstance(f, ast.FunctionDef)]
                    used |= {(base, m) for m in methods if not m.startswith("__")}
    return used


TRT_RECEIVERS = {
    "trt": "module",
    "trt_runtime": "Runtime",
    "trt_engine": "ICudaEngine",
    "trt_context": "IExecutionContext",
}
# The runner's files: every module of the package but the CUDA layer.
TRT_FILES = sorted(path for path in RUNNER.glob("*.py") if path.name != "cuda.py")


def dotted_pairs(names: tuple[str, ...]) -> set[tuple[str, str]]:
    return {tuple(n.rsplit(".", 1)) if "." in n else ("module", n) for n in names}


@pytest.mark.unit
def test_the_runner_uses_exactly_the_tensorrt_names_it_lists() -> None:
    listed = {(owner, name) for owner, names in TRT_RUNNER_API.items() for name in names}
    assert api_used(TRT_FILES, TRT_RECEIVERS) == listed
    cuda_receivers = {"cudart": "module"}
    assert api_used(TRT_FILES, cuda_receivers, ("cuda_runtime",)) == set()  # through cuda.py


@pytest.mark.unit
def test_the_cuda_layer_uses_exactly_the_cuda_names_it_lists() -> None:
    receivers = {"cudart": "module", "properties": "cudaDeviceProp"}
    used = api_used([Path(cuda_module.__file__)], receivers, ("cuda_runtime",))
    assert used == dotted_pairs(CUDA_API)


def resolve(root: object, dotted: str) -> object:
    for part in dotted.split("."):
        root = getattr(root, part)
    return root


@pytest.mark.unit
def test_every_tensorrt_name_exists_in_the_installed_lean_runtime() -> None:
    trt = importlib.import_module(LEAN)
    for owner, names in TRT_RUNNER_API.items():
        where = trt if owner == "module" else resolve(trt, owner)
        missing = [name for name in names if not hasattr(where, name)]
        assert not missing, (owner, missing)
    assert tensorrt_runtimes()["tensorrt-lean"] == trt.__version__


@pytest.mark.unit
def test_every_tensorrt_name_is_defined_by_the_full_bindings() -> None:
    """The full runtime (which runs plans that are not version-compatible) cannot be imported
    without NVIDIA's libraries; its compiled module and __init__ hold every name it defines."""
    spec = importlib.util.find_spec("tensorrt_bindings")
    if spec is None:
        pytest.skip("tensorrt_bindings (the dev extra's tensorrt-cu13-bindings) is not installed")
    folder = Path(spec.origin).parent
    compiled = (folder / "tensorrt.so").read_bytes()  # C strings (the linker may share tails)
    python = (folder / "__init__.py").read_text()

    def defined(name: str) -> bool:
        return name.encode() + b"\0" in compiled or re.search(rf"\b{name}\b", python) is not None

    names = sorted({name for names in TRT_RUNNER_API.values() for name in names})
    assert [name for name in names if not defined(name)] == []


@pytest.mark.unit
def test_every_cuda_name_exists_in_the_installed_cuda_bindings() -> None:
    cudart = importlib.import_module("cuda.bindings.runtime")
    missing = [name for name in CUDA_API if not _has(cudart, name)]
    assert not missing, missing


def _has(root: object, dotted: str) -> bool:
    try:
        resolve(root, dotted)
    except AttributeError:
        return False
    return True


@pytest.mark.unit
def test_the_tensorrt_logger_keeps_tensorrt_s_errors() -> None:
    """Our ILogger subclass with the real lean runtime: without a GPU, ``Runtime(logger)`` logs
    its CUDA failure through it. (Such a runtime crashes the process when touched or freed, so
    this runs apart and leaves by os._exit.)"""
    if NO_GPU is None:
        pytest.skip("a CUDA GPU is usable here: TensorRT starts without an error to keep")
    code = textwrap.dedent(
        f"""
        import json, os, {LEAN} as trt
        from inctrl_runtime.engines.tensorrt.runtimes import _error_log_class
        log = _error_log_class(trt)()
        runtime = trt.Runtime(log)
        print(json.dumps(log.errors), flush=True)
        os._exit(0)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    errors = json.loads(done.stdout)
    assert errors and "CUDA initialization failure" in errors[0], errors
    assert all("\n" not in error for error in errors)
