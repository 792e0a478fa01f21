"""What the two graphs of a bundle take and give: names and shapes, stated once.

Shapes are written in letters, the model's sizes: S image size, E embedding, L tapped layers, P
patches per image, D token width; B (the batch) and N (prompt patches, k x P) are the dynamic
axes. Every graph's boundary is float32, whatever the precision inside. The runtime checks a
bundle's graph records against this (``inctrl_runtime.bundle``), the export names and shapes the
ONNX graphs from it (``inctrl_export.graphs``), and TensorRT profiles span its dynamic axes
(``inctrl_runtime.engines.tensorrt.plans``). The head's outputs are the fields of ``Scores``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from inctrl_runtime.results import SCORE_FIELDS

Letters = tuple[int | str, ...]
GraphContract = dict[str, Letters]  # tensor name -> shape in letters

BATCH_AXIS, PROMPT_AXIS = "B", "N"
DYNAMIC_AXES = (BATCH_AXIS, PROMPT_AXIS)
GRAPHS = ("encoder", "head")
# The encoder's outputs, which the head takes as they are.
FEATURES: GraphContract = {
    "embedding": ("B", "E"),
    "adapted": ("B", "E"),
    "patches": ("B", "L", "P", "D"),
}
# The head's few-shot inputs: a category's reference bank and its text prior.
FEW_SHOT_INPUTS: GraphContract = {
    "ref_patches": ("L", "N", "D"),
    "ref_adapted": ("E",),
    "text_prior": (2, "E"),
}
# graph -> (inputs, outputs), each name -> shape in letters.
GRAPH_CONTRACT: dict[str, tuple[GraphContract, GraphContract]] = {
    "encoder": ({"image": ("B", 3, "S", "S")}, FEATURES),
    "head": (
        {**FEATURES, **FEW_SHOT_INPUTS},
        {name: ("B", "P") if name == "patch_residual_map" else ("B",) for name in SCORE_FIELDS},
    ),
}


@dataclass(frozen=True)
class ModelSizes:
    """The sizes the letters stand for, as a model config or a bundle's model record gives
    them."""

    image_size: int
    num_patches: int
    layers: int  # tapped blocks
    width: int
    embed_dim: int

    def letters(self) -> dict[str, int]:
        """Letter -> size, for every fixed letter of ``GRAPH_CONTRACT``."""
        return {
            "S": self.image_size,
            "E": self.embed_dim,
            "L": self.layers,
            "P": self.num_patches,
            "D": self.width,
        }


def graph_shapes(
    graph: str, sizes: ModelSizes, dynamic: Mapping[str, int | str]
) -> tuple[GraphContract, GraphContract]:
    """A graph's inputs and outputs with the letters replaced by ``sizes`` and the dynamic axes
    by ``dynamic`` (axis letter -> a size, or a name such as ``batch`` or ``?``)."""
    values = {**sizes.letters(), **dynamic}
    return tuple(  # type: ignore[return-value]
        {name: tuple(values.get(d, d) for d in shape) for name, shape in tensors.items()}
        for tensors in GRAPH_CONTRACT[graph]
    )
