"""Model configurations: frozen dataclasses, one per concern, with the paper's numbers as defaults.

Variants are registered in ``PRESETS``; ``get_config(name)`` is the one place that looks them up.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from inctrl_runtime.errors import InputError


@dataclass(frozen=True)
class VisionConfig:
    """The CLIP ViT image tower and which of its blocks feed the patch residual."""

    image_size: int = 240
    patch_size: int = 16
    width: int = 896
    layers: int = 12
    head_width: int = 64
    mlp_ratio: float = 4.0
    # Residual blocks whose output tokens are compared, counted from 1 as in docs/model.md.
    tapped_blocks: tuple[int, ...] = (7, 9, 11)

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    @property
    def tapped_indices(self) -> list[int]:
        """0-based block indices, as open_clip's ``forward_intermediates`` takes them."""
        return [block - 1 for block in self.tapped_blocks]


@dataclass(frozen=True)
class TextConfig:
    """The CLIP text tower (used only to compute text priors)."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 640
    heads: int = 10
    layers: int = 12


@dataclass(frozen=True)
class HeadConfig:
    """The trainable parts: adapter and the two residual heads."""

    adapter_reduction: int = 4
    hidden: tuple[int, int] = (128, 64)
    # Fixed softmax temperature of the text prior score (not the CLIP logit_scale).
    text_temperature: float = 100.0


@dataclass(frozen=True)
class InCTRLConfig:
    """Everything that fixes the model's shapes."""

    name: str = "ViT-B-16-plus-240"
    embed_dim: int = 640
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    # Backbone weights of presets meant for tests and demos come from this seed, not a file.
    backbone_seed: int | None = None

    def __post_init__(self) -> None:
        if self.vision.image_size % self.vision.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if not all(1 <= b <= self.vision.layers for b in self.vision.tapped_blocks):
            raise ValueError(f"tapped_blocks must lie in 1..{self.vision.layers}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InCTRLConfig:
        vision = dict(data.get("vision", {}))
        if "tapped_blocks" in vision:
            vision["tapped_blocks"] = tuple(vision["tapped_blocks"])
        head = dict(data.get("head", {}))
        if "hidden" in head:
            head["hidden"] = tuple(head["hidden"])
        return cls(
            name=data["name"],
            embed_dim=data["embed_dim"],
            vision=VisionConfig(**vision),
            text=TextConfig(**data.get("text", {})),
            head=HeadConfig(**head),
            backbone_seed=data.get("backbone_seed"),
        )


def _vit_b_16_plus_240() -> InCTRLConfig:
    return InCTRLConfig()


def _tiny() -> InCTRLConfig:
    # Same 240 px input and 15 x 15 grid as the real model, a fraction of its width and depth.
    return InCTRLConfig(
        name="tiny",
        embed_dim=32,
        vision=VisionConfig(width=64, layers=4, head_width=16, tapped_blocks=(2, 3, 4)),
        text=TextConfig(width=32, heads=2, layers=2),
        backbone_seed=0,
    )


def _demo() -> InCTRLConfig:
    # The embedded demo: a reduced ViT with a seeded (untrained) backbone and heads trained on
    # synthetic data (see README). Small enough to ship inside the package.
    return InCTRLConfig(
        name="demo",
        embed_dim=128,
        vision=VisionConfig(width=128, layers=6, head_width=32, tapped_blocks=(2, 4, 6)),
        text=TextConfig(width=32, heads=2, layers=2),
        backbone_seed=2024,
    )


PRESETS = {
    "ViT-B-16-plus-240": _vit_b_16_plus_240,
    "tiny": _tiny,
    "demo": _demo,
}


def get_config(name: str) -> InCTRLConfig:
    """Look up a preset by name."""
    try:
        return PRESETS[name]()
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise InputError(f"unknown preset {name!r}; choose one of: {known}") from None
