"""The arithmetic InCTRL needs, counted from its config dict (``InCTRLConfig.to_dict()``, a
bundle manifest's ``model.config``; no torch). Only matrix products count, a multiply-add as
2 FLOPs; norms, softmax, GELU and other elementwise steps (a few percent) are left out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# open_clip's text tower uses CLIPTextCfg's default MLP ratio; InCTRL's TextConfig keeps it.
TEXT_MLP_RATIO = 4.0


@dataclass(frozen=True)
class ModelShape:
    """The numbers of an InCTRL model that fix its arithmetic."""

    name: str
    image_size: int
    patch_size: int
    width: int
    layers: int
    mlp_ratio: float
    tapped_layers: int
    embed_dim: int
    adapter_reduction: int
    head_hidden: tuple[int, int]
    text_width: int
    text_layers: int
    text_context: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From ``InCTRLConfig.to_dict()`` or a bundle manifest's ``model.config``."""
        vision, text, head = config["vision"], config["text"], config["head"]
        return cls(  # in field order
            config["name"],
            *(int(vision[key]) for key in ("image_size", "patch_size", "width", "layers")),
            float(vision["mlp_ratio"]),
            len(vision["tapped_blocks"]),
            int(config["embed_dim"]),
            int(head["adapter_reduction"]),
            tuple(int(n) for n in head["hidden"]),
            *(int(text[key]) for key in ("width", "layers", "context_length")),
        )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def matmul_flops(rows: int, inner: int, cols: int) -> int:
    """A (rows x inner) @ (inner x cols) product."""
    return 2 * rows * inner * cols


def block_flops(tokens: int, width: int, mlp_ratio: float) -> int:
    """One pre-norm transformer block on ``tokens`` tokens (all heads together)."""
    hidden = int(width * mlp_ratio)
    return (
        matmul_flops(tokens, width, 3 * width)  # q, k, v projections
        + matmul_flops(tokens, width, tokens)  # attention scores, summed over heads
        + matmul_flops(tokens, tokens, width)  # attention x V
        + matmul_flops(tokens, width, width)  # out-projection
        + matmul_flops(tokens, width, hidden)  # MLP up
        + matmul_flops(tokens, hidden, width)  # MLP down
    )


def encoder_flops(shape: ModelShape) -> dict[str, int]:
    """One image through the exported encoder: ViT (class token + patches) and the adapter."""
    patches, width, embed = shape.num_patches, shape.width, shape.embed_dim
    reduced = embed // shape.adapter_reduction
    return {
        "patch_embedding": matmul_flops(patches, 3 * shape.patch_size**2, width),
        "blocks": shape.layers * block_flops(patches + 1, width, shape.mlp_ratio),
        "projection": matmul_flops(1, width, embed),
        "adapter": matmul_flops(1, embed, reduced) + matmul_flops(1, reduced, embed),
    }


def _residual_head_flops(in_dim: int, hidden: tuple[int, int]) -> int:
    first, second = hidden
    return sum(matmul_flops(1, a, b) for a, b in ((in_dim, first), (first, second), (second, 1)))


def head_flops(shape: ModelShape, shots: int) -> dict[str, int]:
    """One query through the head against a bank of ``shots`` prompt images."""
    patches = shape.num_patches
    return {
        "similarity": shape.tapped_layers * matmul_flops(patches, shape.width, shots * patches),
        "image_head": _residual_head_flops(shape.embed_dim, shape.head_hidden),
        "holistic_head": _residual_head_flops(patches, shape.head_hidden),
        "text_score": matmul_flops(1, shape.embed_dim, 2),
    }


def text_prompt_flops(shape: ModelShape) -> int:
    """One text prompt over the full context, as the authors encode it."""
    tokens = shape.text_context
    blocks = shape.text_layers * block_flops(tokens, shape.text_width, TEXT_MLP_RATIO)
    return blocks + matmul_flops(1, shape.text_width, shape.embed_dim)


def query_flops(shape: ModelShape, shots: int) -> int:
    """A query with the bank and text prior cached: one encoder pass and the head."""
    return sum(encoder_flops(shape).values()) + sum(head_flops(shape, shots).values())


def authors_query_flops(shape: ModelShape, shots: int, text_prompts: int) -> int:
    """A query the authors' way: the k prompts and every text prompt encoded again."""
    prompts = shots * sum(encoder_flops(shape).values())
    return query_flops(shape, shots) + prompts + text_prompts * text_prompt_flops(shape)


def flops_record(shape: ModelShape, shots: Sequence[int]) -> dict:
    """The report's arithmetic of a model: encoder per image, head per query for each k, one
    authors' text prompt."""
    encoder = encoder_flops(shape)
    return {
        "encoder_per_image": {**encoder, "total": sum(encoder.values())},
        "head_per_query": {str(k): sum(head_flops(shape, k).values()) for k in shots},
        "authors_text_prompt": text_prompt_flops(shape),
    }
