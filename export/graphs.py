"""The two exported graphs: wrapper modules, and their names, shapes and dynamic axes.

``encoder``: image -> embedding, adapted embedding, unit-norm patch tokens of the tapped blocks.
``head``: query features + a category's reference bank + its text prior -> every field of
``inctrl.Scores``. Names and shapes are the runtime's graph contract
(``inctrl_runtime.contract``), sized by the model config; symbolic dimensions (strings) are the
dynamic axes: ``batch`` everywhere and ``prompt_patches`` (N = k * P) on the bank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from inctrl.backbone import ImageFeatures
from inctrl.config import InCTRLConfig
from inctrl.model import InCTRL
from inctrl.residual import unit
from inctrl_runtime.contract import BATCH_AXIS, GRAPHS, PROMPT_AXIS, ModelSizes, graph_shapes

Shape = tuple[int | str, ...]

BATCH = "batch"
PROMPT_PATCHES = "prompt_patches"
# Inputs that hold unit vectors (the dummies are normalized the same way).
UNIT_INPUTS = ("patches", "ref_patches", "text_prior")


@dataclass(frozen=True)
class GraphSpec:
    """One graph's file name and its named, shaped inputs and outputs (all float32)."""

    name: str
    inputs: dict[str, Shape]
    outputs: dict[str, Shape]

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """For ``torch.onnx.export``: every symbolic dimension of every input and output."""
        named = {**self.inputs, **self.outputs}
        axes = {n: {i: d for i, d in enumerate(s) if isinstance(d, str)} for n, s in named.items()}
        return {name: dims for name, dims in axes.items() if dims}

    def to_manifest(self) -> dict:
        def entries(tensors: dict[str, Shape]) -> list[dict]:
            return [{"name": n, "shape": list(s), "dtype": "float32"} for n, s in tensors.items()]

        return {"file": self.file, "inputs": entries(self.inputs), "outputs": entries(self.outputs)}


def model_sizes(config: InCTRLConfig) -> ModelSizes:
    """The sizes of the contract's letters for a model config."""
    return ModelSizes(
        image_size=config.vision.image_size,
        num_patches=config.vision.num_patches,
        layers=len(config.vision.tapped_blocks),
        width=config.vision.width,
        embed_dim=config.embed_dim,
    )


def graph_specs(config: InCTRLConfig) -> dict[str, GraphSpec]:
    """The encoder and head signatures of a model config (docs/model.md, "What is computed
    once"): the runtime's contract with its letters sized and its dynamic axes named."""
    sizes, dynamic = model_sizes(config), {BATCH_AXIS: BATCH, PROMPT_AXIS: PROMPT_PATCHES}
    return {name: GraphSpec(name, *graph_shapes(name, sizes, dynamic)) for name in GRAPHS}


def dummy_inputs(
    spec: GraphSpec, batch: int, prompt_patches: int, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Seeded random inputs of a graph, its symbolic dimensions set to the given sizes."""
    generator = torch.Generator().manual_seed(seed)
    sizes = {BATCH: batch, PROMPT_PATCHES: prompt_patches}
    inputs = {}
    for name, shape in spec.inputs.items():
        value = torch.randn(*(sizes.get(d, d) for d in shape), generator=generator)
        inputs[name] = unit(value) if name in UNIT_INPUTS else value
    return inputs


class EncoderGraph(nn.Module):
    """The image tower of an InCTRL model, plus the head's adapter: what a query or prompt needs
    once (the bundle runs the adapter in the encoder, the rest of the head in its own graph)."""

    def __init__(self, model: InCTRL) -> None:
        super().__init__()
        self.model = model
        self.adapter = model.inctrl_head.adapter

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.encode(image)
        return features.embedding, self.adapter(features.embedding), features.patches


class HeadGraph(nn.Module):
    """The model's ``InCTRLHead`` on encoded queries, a shared reference bank and a text prior."""

    def __init__(self, model: InCTRL) -> None:
        super().__init__()
        self.inctrl_head = model.inctrl_head

    def forward(
        self,
        embedding: torch.Tensor,
        adapted: torch.Tensor,
        patches: torch.Tensor,
        ref_patches: torch.Tensor,
        ref_adapted: torch.Tensor,
        text_prior: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        features = ImageFeatures(embedding, patches)
        scores = self.inctrl_head.residual_scores(
            features, ref_patches, ref_adapted, text_prior, adapted=adapted
        )
        return tuple(scores)


def wrappers(model: InCTRL) -> dict[str, nn.Module]:
    """The wrapper module of each graph, keyed as ``graph_specs``."""
    return {"encoder": EncoderGraph(model).eval(), "head": HeadGraph(model).eval()}
