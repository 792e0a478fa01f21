"""Device memory for ``TrtEngine`` (``engine``): the batch buffers it binds, the device values its
runs and uploads return, and how a batch is cut into profile-sized runs.

A run's outputs live in the engine's own buffers until its next run overwrites them, so the
``DeviceTensor`` that hands them out carries the run's generation, and is refused once stale.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from inctrl_runtime.engines.tensorrt.cuda import (
    DeviceMemory,
    Event,
    Stream,
    copy_on_device,
    copy_to_device,
    copy_to_host,
)
from inctrl_runtime.errors import InputError

if TYPE_CHECKING:
    from inctrl_runtime.engines.tensorrt.engine import TrtEngine

# TensorRT binds a tensor only at an address aligned to 256 bytes (IExecutionContext::
# setTensorAddress); cudaMalloc's allocations are.
ALIGNMENT = 256


@dataclass(frozen=True, eq=False)
class DeviceTensor:
    """An array in GPU memory: an output a ``TrtEngine`` run kept on the device (``generation``
    is that run's; the engine's next run overwrites it) or an array it uploaded (``memory`` is
    its own allocation, generation None). ``event`` is recorded on the producing stream once the
    values are written (None: already written)."""

    ptr: int
    shape: tuple[int, ...]
    dtype: str
    engine: TrtEngine
    generation: int | None
    event: Event | None = None
    memory: DeviceMemory | None = None

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * np.dtype(self.dtype).itemsize

    def check_current(self) -> None:
        """Refuse, in one line, a value whose buffer was overwritten or freed since."""
        if self.engine.closed:
            raise InputError(f"{self.engine.file}: this device value's engine is closed")
        if self.generation is not None and self.generation != self.engine.generation:
            raise InputError(
                f"{self.engine.file}: this device value was overwritten by a later run of its "
                "engine; use it (or call .numpy()) before running that engine again"
            )

    def numpy(self) -> np.ndarray:
        """A host copy (waits for the producing run)."""
        self.check_current()
        array = np.empty(self.shape, dtype=self.dtype)
        stream = self.engine.stream
        if self.event is not None:
            stream.wait(self.event)
        copy_to_host(array, self.ptr, stream)
        stream.synchronize()
        return array

    def __repr__(self) -> str:
        return f"DeviceTensor({self.dtype}{list(self.shape)} at {self.ptr:#x})"


class BatchBuffers:
    """One device buffer per batched tensor (inputs copied from the host, and outputs), sized
    for ``rows`` batch rows: allocated once for the profile's largest batch, and replaced by
    larger ones only when a larger batch arrives (it then runs in profile-sized chunks, each
    bound at its rows' offset).

    TensorRT binds only addresses aligned to ``ALIGNMENT`` bytes: a chunk whose rows start
    elsewhere runs through a scratch buffer (of the profile's largest batch), filled and emptied
    by device-to-device copies queued on the run's stream."""

    def __init__(self, row_bytes: Mapping[str, int], rows: int) -> None:
        self.row_bytes = dict(row_bytes)
        self.chunk_rows = rows
        self.rows = 0
        self._memory: dict[str, DeviceMemory] = {}
        self._scratch: dict[str, DeviceMemory] = {}
        self._pending: list[tuple[int, int, int]] = []  # (target, scratch, bytes) to copy back
        self.grow(rows)

    @property
    def step(self) -> int:
        """Chunks of a multiple of this many rows start aligned in every buffer."""
        return aligned_rows(self.row_bytes.values())

    def grow(self, rows: int) -> None:
        """Buffers for at least ``rows`` rows; the old ones are freed (their contents lost), so
        the caller must be sure no queued work still uses them."""
        if rows <= self.rows:
            return
        for memory in self._memory.values():
            memory.free()
        self._memory = {name: DeviceMemory(rows * size) for name, size in self.row_bytes.items()}
        self.rows = rows

    def ptr(self, name: str, row: int = 0) -> int:
        """The device address of batch row ``row`` of tensor ``name``."""
        return self._memory[name].ptr + row * self.row_bytes[name]

    def bind_input(self, name: str, address: int, rows: int, stream: Stream) -> int:
        """What TensorRT can bind for ``rows`` rows of input ``name`` that lie at ``address``
        (here or in a producer's buffer): the address when aligned, else a scratch copy."""
        if address % ALIGNMENT == 0:
            return address
        scratch = self._scratch_ptr(name)
        copy_on_device(scratch, address, rows * self.row_bytes[name], stream)
        return scratch

    def bind_output(self, name: str, first: int, rows: int) -> int:
        """Where TensorRT writes rows ``first``.. of output ``name``: in place when aligned,
        else a scratch buffer that ``settle`` copies into place."""
        target = self.ptr(name, first)
        if target % ALIGNMENT == 0:
            return target
        scratch = self._scratch_ptr(name)
        self._pending.append((target, scratch, rows * self.row_bytes[name]))
        return scratch

    def settle(self, stream: Stream) -> None:
        """Queue the copies of the outputs a chunk wrote to scratch buffers into place."""
        for target, scratch, nbytes in self._pending:
            copy_on_device(target, scratch, nbytes, stream)
        self._pending.clear()

    def _scratch_ptr(self, name: str) -> int:
        if name not in self._scratch:
            self._scratch[name] = DeviceMemory(self.chunk_rows * self.row_bytes[name])
        return self._scratch[name].ptr

    def free(self) -> None:
        for memory in (*self._memory.values(), *self._scratch.values()):
            memory.free()
        self._memory, self._scratch = {}, {}
        self.rows = 0


def aligned_rows(row_bytes: Iterable[int]) -> int:
    """The fewest rows whose bytes are a multiple of ``ALIGNMENT`` for every row size."""
    return math.lcm(*(ALIGNMENT // math.gcd(ALIGNMENT, size) for size in row_bytes))


def chunks(batch: int, smallest: int, largest: int, step: int = 1) -> list[tuple[int, int]]:
    """(first row, rows) of each run for a batch of ``batch`` >= ``smallest`` rows on a profile
    of ``smallest``..``largest``: one run when it fits; else runs of the largest multiple of
    ``step`` rows the profile takes (so that they start aligned; ``largest`` if none), and a
    last run of the rest or, when the rest is below ``smallest``, of the last ``smallest`` rows
    (they overlap the previous run; rows are scored independently, so rows computed twice
    agree)."""
    if batch <= largest:
        return [(0, batch)]
    size = largest // step * step
    size = size if size >= max(smallest, 1) else largest
    found = [(start, min(size, batch - start)) for start in range(0, batch, size)]
    if found[-1][1] < smallest:
        found[-1] = (batch - smallest, smallest)
    return found


def upload_array(array: np.ndarray, engine: TrtEngine, stream: Stream) -> DeviceTensor:
    """A host array copied into a new device allocation of its own (queued on ``stream``)."""
    memory = DeviceMemory(array.nbytes)
    copy_to_device(memory.ptr, array, stream)
    return DeviceTensor(memory.ptr, array.shape, array.dtype.name, engine, None, memory=memory)
