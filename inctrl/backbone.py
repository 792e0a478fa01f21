"""The frozen CLIP backbone, built and queried through open_clip's public API.

Weights come only from local files: nothing here downloads.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import open_clip
import torch

from inctrl.config import InCTRLConfig, TextConfig, VisionConfig
from inctrl.residual import unit


class ImageFeatures(NamedTuple):
    """What the image encoder gives for a batch of B images."""

    embedding: torch.Tensor  # B x E: class token -> ln_post -> proj, not normalized
    patches: torch.Tensor  # B x L x P x D: tapped blocks' patch tokens, unit L2 norm


def build_clip(config: InCTRLConfig) -> open_clip.CLIP:
    """An open_clip CLIP with the config's shapes (nn.GELU, fp32), randomly initialized.

    Presets with a ``backbone_seed`` are initialized from that seed, so the same preset always
    gives the same backbone.
    """
    vision_cfg = _open_clip_cfg(open_clip.CLIPVisionCfg, config.vision)
    text_cfg = _open_clip_cfg(open_clip.CLIPTextCfg, config.text)
    if config.backbone_seed is None:
        return open_clip.CLIP(config.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.backbone_seed)
        return open_clip.CLIP(config.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)


def _open_clip_cfg(cfg_class: type, ours: VisionConfig | TextConfig):
    """open_clip's tower config from ours, whose fields carry open_clip's names (``tapped_blocks``,
    ours alone, stays out); open_clip's other fields keep their defaults."""
    theirs = {f.name for f in dataclasses.fields(cfg_class)}
    return cfg_class(**{k: v for k, v in dataclasses.asdict(ours).items() if k in theirs})


def encode_images(
    visual: torch.nn.Module, config: InCTRLConfig, pixels: torch.Tensor
) -> ImageFeatures:
    """Run the image tower (``clip.visual``) once: embeddings and the tapped blocks' unit-norm
    patch tokens.

    Args:
        pixels: B x 3 x S x S preprocessed images.
    """
    out = visual.forward_intermediates(
        pixels, indices=config.vision.tapped_indices, output_fmt="NLC"
    )
    # NLC intermediates exclude the class token: each is B x P x D, patches row-major.
    patches = torch.stack(out["image_intermediates"], dim=1)
    return ImageFeatures(embedding=out["image_features"], patches=unit(patches))


def make_tokenizer(config: InCTRLConfig) -> open_clip.SimpleTokenizer:
    """The CLIP BPE tokenizer (its vocabulary ships inside open_clip; no download), built once
    per context length."""
    return _tokenizer(config.text.context_length)


@functools.lru_cache(maxsize=4)
def _tokenizer(context_length: int) -> open_clip.SimpleTokenizer:
    return open_clip.SimpleTokenizer(context_length=context_length)


def encode_texts(
    clip: open_clip.CLIP, tokenizer: open_clip.SimpleTokenizer, texts: list[str]
) -> torch.Tensor:
    """Unit-norm text embeddings, T x E (EOT token -> ln_final -> text_projection)."""
    device = clip.token_embedding.weight.device
    tokens = tokenizer(texts).to(device)
    if clip.text_pool_type != "argmax" or clip.attn_mask is None:
        return unit(clip.encode_text(tokens))
    return unit(_encode_text_prefix(clip, tokens))


def _encode_text_prefix(clip: open_clip.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``clip.encode_text`` on the tokens up to the last EOT only.

    Attention is causal and the embedding is read at the EOT token, so the padding after it
    never reaches the result: dropping it is exact, and several times faster (the prompt
    ensembles use about 15 of the 77 positions).
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    cast_dtype = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast_dtype) + clip.positional_embedding[:length]
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    return pooled @ clip.text_projection
