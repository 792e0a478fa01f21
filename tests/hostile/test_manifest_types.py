"""A manifest field of the wrong type is refused in one line when the bundle opens (the typed
records of ``inctrl_runtime.manifest``), by every command that opens it, never a traceback; a
TensorRT build's record, by what reads the builds (``info``; scoring on onnxruntime does not)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inctrl_runtime.cli

from helpers import edit_manifest, random_images, run_main

pytestmark = pytest.mark.cli

DAMAGE = {
    "verification a text": lambda m: m.update(verification="x"),
    "verification a list": lambda m: m.update(verification=[1, 2]),
    "verification a number": lambda m: m.update(verification=3),
    "verification passed a text": lambda m: m.update(verification={"passed": "yes"}),
    "source a text": lambda m: m.update(source="tiny.safetensors"),
    "source demo a number": lambda m: m["source"].update(demo=2),
    "quantization a text": lambda m: m["graphs"]["encoder"].update(quantization="int8"),
    "fp32 products a number": lambda m: m["graphs"]["encoder"].update(
        quantization={"format": "qdq", "fp32_products": 3}
    ),
    "a build's check a text": lambda m: m.update(
        engines={"fp16.trt11.4.sm89": {"verification": "x"}}
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_field_of_the_wrong_type_is_one_line(bundle: Path, tmp_path: Path, damage: str):
    edit_manifest(bundle, DAMAGE[damage])
    query = tmp_path / "q.npy"
    np.save(query, random_images(1, seed=2)[0])
    score = ["score", bundle, "--category", "candle", "-s", query, query]
    for args in (["info", bundle], *([] if "build" in damage else [score])):
        outcome = run_main(inctrl_runtime.cli.main, *args)
        outcome.assert_refused("manifest.json")
