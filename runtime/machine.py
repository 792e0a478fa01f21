"""What machine a figure or a report was made on: the CPU's name, its cores and the vector
extensions int8 and bf16 speed depend on (standard library only; the bench and the inspection
report both say it)."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

# The CPU flags int8 and bf16 speed depend on (/proc/cpuinfo names), in the order reported;
# every amx_* flag is reported too.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16")


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo), else what platform knows."""
    with contextlib.suppress(OSError, IndexError), open("/proc/cpuinfo") as handle:
        names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        return names[0]
    return platform.processor() or platform.machine()


def vector_extensions(cpuinfo: str | None = None) -> list[str]:
    """The CPU's vector extensions among ``VECTOR_FLAGS`` and amx_*, from the flags of
    ``cpuinfo`` (default: /proc/cpuinfo's text); empty where the flags are unknown."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":  # every core lists the same flags: the first line will do
            flags = set(value.split())
            break
    return [f for f in VECTOR_FLAGS if f in flags] + sorted(f for f in flags if f.startswith("amx"))


def describe_machine() -> str:
    """One line: the CPU, its cores and vector extensions, e.g. "Intel Xeon, 2 cores, avx2"."""
    extensions = ", ".join(vector_extensions()) or "vector extensions unknown"
    return f"{cpu_model()}, {os.cpu_count()} cores, {extensions}"
