"""Device names, parsed once for every command line (torch-free): ``cpu``, ``cuda``, ``cuda:N``
and, for the runtime, ``tensorrt`` / ``tensorrt:N`` (native TensorRT plans) and
``ort-tensorrt`` / ``ort-tensorrt:N`` (onnxruntime's TensorRT execution provider). Whether the
device exists is the business of whoever runs on it (torch, an onnxruntime provider, the
TensorRT runner)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from inctrl_runtime.errors import InputError

TORCH_DEVICES = ("cpu", "cuda")
RUNTIME_DEVICES = ("cpu", "cuda", "tensorrt", "ort-tensorrt")


@dataclass(frozen=True)
class DeviceName:
    """A parsed device: its kind and GPU index (None when none was given)."""

    kind: str
    index: int | None = None

    def __str__(self) -> str:
        return self.kind if self.index is None else f"{self.kind}:{self.index}"


def parse_device(device: object, kinds: Sequence[str] = RUNTIME_DEVICES) -> DeviceName:
    """``kind`` or ``kind:N`` with ``kind`` one of ``kinds`` and N a GPU index; anything else is
    a one-line error that lists what is accepted."""
    text = str(device).strip()
    kind, colon, index = text.partition(":")
    valid = kind in kinds and (not colon or index.isascii() and index.isdigit())
    if not valid or (kind == "cpu" and colon):
        accepted = ", ".join(k if k == "cpu" else f"{k}, {k}:N" for k in kinds)
        raise InputError(f"unknown device {text!r}; use {accepted}")
    return DeviceName(kind, int(index) if colon else None)
