"""File helpers of the torch side: safetensors reading, plus the runtime's atomic writers."""

from __future__ import annotations

import os

from inctrl_runtime.files import atomic_path, file_sha256, write_json, write_text

__all__ = ["atomic_path", "file_sha256", "read_safetensors", "write_json", "write_text"]


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """All tensors (torch) and the metadata of a safetensors file.

    Raises ``SafetensorError``, ``OSError`` or ``ValueError`` for anything else.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
