"""A TensorRT plan's IO tensors as ``TrtEngine`` (``engine``) binds them: read by name from the
deserialized engine, and the checks of what a run or an upload is given, each refusal one line
that says how to rebuild the plan or what to give instead.

Batched tensors (axis 0 dynamic, every other axis fixed) are bound at row offsets into one
buffer; the others are the few-shot inputs (the bank, whose one dynamic axis is its N = k x P
prompt patches, and the prior), uploaded once per category.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from inctrl_runtime.engines import TensorSpec
from inctrl_runtime.engines.tensorrt.buffers import DeviceTensor
from inctrl_runtime.engines.tensorrt.plans import REBUILD, Profile
from inctrl_runtime.errors import BundleError, InputError


@dataclass(frozen=True)
class Binding:
    """One IO tensor: its spec (``?`` for a dynamic axis), whether axis 0 is the batch, the bytes
    of one batch row, and an input's profile (min, opt, max shapes; None when fixed)."""

    spec: TensorSpec
    is_input: bool
    batched: bool
    row_bytes: int
    profile: Profile | None


def read_bindings(trt: ModuleType, trt_engine: Any, file: Path) -> dict[str, Binding]:
    """Every IO tensor of a deserialized engine by name (profile 0), refused in one line when
    this runner cannot bind it (a dynamic axis other than a batched tensor's first, or an
    output without a batch axis)."""
    found = {}
    for i in range(trt_engine.num_io_tensors):
        name = trt_engine.get_tensor_name(i)
        is_input = trt_engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dims = tuple(int(d) for d in trt_engine.get_tensor_shape(name))
        try:
            dtype = np.dtype(trt.nptype(trt_engine.get_tensor_dtype(name)))
        except TypeError:
            raise BundleError(f"{file}: {name} has a type numpy cannot hold") from None
        batched = bool(dims) and dims[0] < 0
        if batched and min(dims[1:], default=0) < 0 or not (is_input or batched):
            raise BundleError(
                f"{file}: {name} has shape {list(dims)}; this runtime binds batched tensors "
                "whose only dynamic axis is the first; rebuild with inctrl-export tensorrt"
            )
        profile = None
        if is_input and min(dims, default=0) < 0:
            shapes = trt_engine.get_tensor_profile_shape(name, 0)
            profile = tuple(tuple(int(d) for d in shape) for shape in shapes)
        spec = TensorSpec(name, tuple("?" if d < 0 else d for d in dims), dtype.name)
        row_bytes = math.prod(dims[1:]) * dtype.itemsize if batched else 0
        found[name] = Binding(spec, is_input, batched, row_bytes, profile)  # type: ignore[arg-type]
    return found


class PlanIO:
    """The IO tensors of one plan of a bundle, with the batch range of its profile and the
    prompt counts k it was built for (``shots``: min, opt, max)."""

    def __init__(
        self, bindings: Mapping[str, Binding], file: Path, bundle: Path, shots: tuple[int, ...]
    ) -> None:
        self.bindings = dict(bindings)
        self.file, self.bundle, self.shots = file, bundle, shots
        self.inputs = tuple(b.spec for b in self.bindings.values() if b.is_input)
        self.outputs = tuple(b.spec for b in self.bindings.values() if not b.is_input)
        batched = [b.profile for b in self.bindings.values() if b.batched and b.profile]
        if not batched:
            raise BundleError(f"{file}: has no batched input; {REBUILD.format(bundle=bundle)}")
        self.batch = tuple(shape[0] for shape in batched[0])  # min, opt, max

    def input(self, name: str) -> Binding:
        binding = self.bindings.get(name)
        if binding is None or not binding.is_input:
            raise InputError(f"{self.file}: has no input {name!r}")
        return binding

    def host_array(self, name: str, array: Any) -> np.ndarray:
        """A host value for input ``name``: C-contiguous, of its dtype, of a shape it takes."""
        binding = self.input(name)
        array = np.ascontiguousarray(array, dtype=binding.spec.dtype)
        self.check_shape(binding, array.shape)
        return array

    def check_feeds(self, feeds: Mapping[str, Any], device_index: int) -> tuple[int, dict]:
        """The batch size, and each input as a host array (``host_array``) or a current device
        value of the right dtype and shape on GPU ``device_index``."""
        wanted = {spec.name for spec in self.inputs}
        if set(feeds) != wanted:
            missing = ", ".join(sorted(wanted - set(feeds))) or "none"
            extra = ", ".join(sorted(set(feeds) - wanted)) or "none"
            raise InputError(f"{self.file}: inputs missing: {missing}; unexpected: {extra}")
        values: dict[str, Any] = {}
        for spec in self.inputs:
            value = feeds[spec.name]
            if not isinstance(value, DeviceTensor):
                values[spec.name] = self.host_array(spec.name, value)
                continue
            value.check_current()
            if value.engine.device_index != device_index or value.dtype != spec.dtype:
                raise InputError(
                    f"{self.file}: {spec.name} is {value.dtype} on GPU {value.engine.device_index}"
                    f"; this plan takes {spec.dtype} on GPU {device_index}"
                )
            self.check_shape(self.bindings[spec.name], value.shape)
            values[spec.name] = value
        batches = {values[s.name].shape[0] for s in self.inputs if self.bindings[s.name].batched}
        if len(batches) != 1:
            raise InputError(f"{self.file}: the batched inputs differ in batch size {batches}")
        batch = batches.pop()
        smallest, best, largest = self.batch
        if batch < smallest:
            raise InputError(
                f"{self.file}: a batch of {batch} is below this plan's profile (batch "
                f"{smallest}..{largest}): rebuild with inctrl-export tensorrt {self.bundle} "
                f"--batch {batch},{best},{largest} --force, or give at least {smallest} images"
            )
        return batch, values

    def check_shape(self, binding: Binding, shape: tuple[int, ...]) -> None:
        """Refuse a shape of the wrong rank or fixed sizes, or outside the profile on a
        few-shot input's dynamic axis (a batch of any size runs, in chunks)."""
        spec = binding.spec
        fixed = zip(spec.shape, shape, strict=False)
        if len(shape) != len(spec.shape) or any(isinstance(a, int) and a != b for a, b in fixed):
            raise InputError(
                f"{self.file}: {spec.name} has shape {list(shape)}, expected {spec.describe()}"
            )
        if binding.batched or binding.profile is None:
            return
        low, _, high = binding.profile
        for axis, size in enumerate(shape):
            if not low[axis] <= size <= high[axis]:
                raise InputError(self._prompt_refusal(spec.name, size, low[axis], high[axis]))

    def _prompt_refusal(self, name: str, size: int, low: int, high: int) -> str:
        fewest, best, most = self.shots
        shots = math.ceil(size / (low // fewest))  # low = fewest x P
        advice = f"at most {most}" if shots > most else f"at least {fewest}"
        return (
            f"{self.file}: the bank's {name} holds {shots} prompts ({size} patches); this plan "
            f"was built for k {fewest}..{most} ({low}..{high} patches): rebuild with "
            f"inctrl-export tensorrt {self.bundle} --shots {min(fewest, shots)},{best},"
            f"{max(most, shots)} --force, or register {advice} prompts"
        )
