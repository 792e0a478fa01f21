"""What ``inctrl-export tensorrt`` checks before it builds anything (``inctrl_export.tensorrt``):
the profile sizes, the precision (the bundle's; int8 only from symmetric Q/DQ nodes), and plans
already there; each refusal one line naming what to run instead.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.contract import GRAPHS
from inctrl_runtime.engines.tensorrt.plans import TRT_PRECISIONS, plan_file, profile_sizes
from inctrl_runtime.errors import InputError

# The one int8 encoder TensorRT consumes: static Q/DQ with signed, symmetric (zero point 0)
# activations (the encoder's quantization record holds at least these).
TRT_QUANTIZATION = {"format": "qdq", "activations": "int8-symmetric"}


def sizes_of(sizes: Sequence[int] | str) -> tuple:
    """Sizes as the command line gives them ("1,8,32") as numbers; parts that are not whole
    numbers stay text, for the refusal to quote."""
    if not isinstance(sizes, str):
        return tuple(sizes)
    parts = [part.strip() for part in sizes.split(",")]
    return tuple(int(part) if part.isascii() and part.isdigit() else part for part in parts)


def check_batch(sizes: tuple) -> tuple[int, int, int]:
    """``--batch`` as (min, opt, max), from 1: the runtime encodes one image, and k prompts as
    one batch, so an engine must take any batch up to its max (opt is what it is tuned for)."""
    batch = profile_sizes(sizes, "--batch")
    if batch[0] != 1:
        raise InputError(
            f"--batch {','.join(map(str, sizes))}: MIN must be 1 (the runtime encodes single "
            "images, and the k prompts as one batch); OPT is the size the engines are tuned for"
        )
    return batch


def check_precision(bundle: Bundle, precision: str | None) -> str:
    """The engines' precision: the bundle's encoder's (strongly typed networks keep the graph's
    types); another one, or an int8 encoder TensorRT cannot consume, is refused in one line
    naming the export to run."""
    held = bundle.graphs["encoder"].precision
    if precision is not None and precision != held:
        if precision not in TRT_PRECISIONS:
            choices = " or ".join(TRT_PRECISIONS)
            raise InputError(f"unknown --precision {precision!r}; choose {choices}")
        raise InputError(
            f"{bundle.path}: holds an {held} encoder, and an engine's precision is its graph's; "
            f"export an {precision} bundle and build its engines: "
            f"{export_command(bundle, precision)}"
        )
    if held == "int8" or held not in TRT_PRECISIONS:
        check_quantization(bundle)
    return held


def check_quantization(bundle: Bundle) -> None:
    """Refuse, in one line naming the export to run, a quantized encoder other than int8 with
    symmetric Q/DQ nodes (``TRT_QUANTIZATION``): TensorRT takes int8 only from Q/DQ nodes whose
    zero points are 0."""
    encoder = bundle.graphs["encoder"]
    record = encoder.quantization.raw if encoder.quantization else {}
    if encoder.precision == "int8" and all(record.get(k) == v for k, v in TRT_QUANTIZATION.items()):
        return
    if record:
        found = ", ".join(f"{k} {record[k]!r}" for k in TRT_QUANTIZATION if k in record)
        found = f"quantized as {found}"
    else:
        found = "without a quantization record (the dynamic int8 of earlier exports)"
    raise InputError(
        f"{encoder.file}: an {encoder.precision} encoder {found}; TensorRT needs the symmetric "
        f"Q/DQ int8 (format 'qdq', activations 'int8-symmetric', calibrated on images); export "
        f"it so: {export_command(bundle, 'int8')}"
    )


def export_command(bundle: Bundle, precision: str) -> str:
    """The ``inctrl-export onnx`` command that exports ``bundle``'s model again in
    ``precision`` beside it (the checkpoint by its recorded file name; int8 calibrated on a
    folder of normal images, which only the demo does without)."""
    words = ["inctrl-export", "onnx", "--precision", precision]
    if not bundle.is_demo:
        words += ["-c", bundle.source_file or "CHECKPOINT"]
        if precision == "int8":
            words += ["--calibration", "DIR"]
        for category in bundle.categories:
            words += ["--category", category]
    words += ["--out", f"{bundle.path}-{precision}"]
    return shlex.join(words)


def check_no_plans(bundle: Bundle, key: str, force: bool) -> None:
    """Refuse, without ``force``, to replace a build the manifest records or plan files of it
    that are already in ``engines/``."""
    if force:
        return
    files = (plan_file(graph, key) for graph in GRAPHS)
    found = [file for file in files if (bundle.path / file).exists()]
    if key in bundle.builds:
        found.insert(0, f"the manifest's record {key}")
    if found:
        raise InputError(
            f"{bundle.path}: already has TensorRT engines {key} ({', '.join(found)}); --force to "
            "replace them"
        )
