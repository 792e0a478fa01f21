"""No command writes into a bundle by an output option: a path that is a bundle, lies inside one
or holds one is refused in one line before anything is written (``files.check_output_path``),
for every output option of every program; only the bundle's own commands write its files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from inctrl_runtime.detector import Detector

from helpers import program_mains, random_images, run_main, snapshot

pytestmark = pytest.mark.cli

MAINS = program_mains()
INSIDE, HOLDS = "lies inside the bundle", "holds the bundle"
# (program, arguments with {b} the bundle and {up} the folder holding it, the refusal)
CASES = [
    ("inctrl-export", ["triton", "{b}", "--out", "{b}/references", "--force"], INSIDE),
    ("inctrl-export", ["triton", "{b}", "--out", "{b}/references/candle.npz", "--force"], INSIDE),
    ("inctrl-export", ["triton", "{b}", "--out", "{b}/encoder.onnx", "--force"], INSIDE),
    ("inctrl-export", ["triton", "{b}", "--out", "{b}/manifest.json", "--force"], INSIDE),
    ("inctrl-export", ["triton", "{b}", "--out", "{b}/repo"], INSIDE),
    ("inctrl-export", ["triton", "{b}", "--out", "{up}", "--force"], HOLDS),
    ("inctrl-export", ["onnx", "--out", "{b}/references", "--force"], INSIDE),
    ("inctrl-export", ["onnx", "--out", "{up}", "--force"], HOLDS),
    ("inctrl-export", ["verify", "{b}", "--json", "{b}/manifest.json"], INSIDE),
    ("inctrl-export", ["tensorrt", "{b}", "--timing-cache", "{b}/engines/cache"], INSIDE),
    ("inctrl-run", ["score", "{b}", "--category", "candle", "--heatmaps", "{b}", "{q}"], HOLDS),
    ("inctrl-run", ["score", "{b}", "--category", "candle", "--heatmaps", "{b}/m", "{q}"], INSIDE),
    (
        "inctrl",
        ["score", "--category", "candle", "-s", "{q}", "--heatmaps", "{b}/m", "{q}"],
        INSIDE,
    ),
    ("inctrl", ["evaluate", "--data", "{up}", "--shots", "1", "--json", "{b}/r.json"], INSIDE),
    ("inctrl", ["data", "synth", "--out", "{b}/synth"], INSIDE),
    ("inctrl", ["data", "index", "{up}", "--out", "{up}"], HOLDS),
    ("inctrl", ["prompts", "bank", "{q}", "--out", "{b}/references/x.st"], INSIDE),
    ("inctrl-bench", ["--json", "{b}/bench.json"], INSIDE),
]


@pytest.fixture
def registered_bundle(bundle: Path) -> Path:
    """A bundle with a registered category: what a wrong output path would destroy."""
    Detector.open(bundle).register("candle", random_images(2, seed=3))
    return bundle


@pytest.mark.parametrize(("program", "args", "refusal"), CASES)
def test_no_output_lands_in_a_bundle(
    registered_bundle: Path, tmp_path: Path, program: str, args: list[str], refusal: str
) -> None:
    query = tmp_path / "q.png"
    Image.fromarray(random_images(1, seed=4)[0]).save(query)
    up = registered_bundle.parent
    before = snapshot(up)
    words = [a.format(b=registered_bundle, up=up, q=query) for a in args]
    outcome = run_main(MAINS[program], *words)
    outcome.assert_refused(refusal)
    assert snapshot(up) == before  # nothing written, nothing replaced
