"""File helpers of the torch side alone: reading safetensors (the atomic writers and hashes are
``inctrl_runtime.files``)."""

from __future__ import annotations

import os


def read_safetensors(path: str | os.PathLike) -> tuple[dict, dict[str, str]]:
    """All tensors (torch) and the metadata of a safetensors file.

    Raises ``SafetensorError``, ``OSError`` or ``ValueError`` for anything else.
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        return {key: handle.get_tensor(key) for key in handle.keys()}, metadata  # noqa: SIM118
