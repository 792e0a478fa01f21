"""The InCTRL model: a frozen open_clip backbone and the trainable ``InCTRLHead`` (an adapter
and two residual heads).

Scoring is split as in docs/model.md ("What is computed once"): the image encoder runs once per
image; a category's ``TextPrior`` and a prompt set's ``ReferenceBank`` are values computed once
and passed in; the head is ``InCTRLHead`` on the pure arithmetic of ``inctrl.residual``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
from collections.abc import Iterator, Sequence

import open_clip
import torch
from torch import nn

from inctrl import residual
from inctrl.backbone import ImageFeatures, build_clip, encode_images, encode_texts, make_tokenizer
from inctrl.checkpoint import (
    BACKBONE_PREFIX,
    CHECKPOINT_KIND,
    check_state,
    is_head_key,
    our_layout,
    read_state_dict,
    save_checkpoint,
)
from inctrl.config import PRESETS, InCTRLConfig, get_config
from inctrl.heads import InCTRLHead
from inctrl.residual import Scores
from inctrl.state import ReferenceBank, TextPrior
from inctrl.text import prompt_ensemble
from inctrl_runtime.devices import TORCH_DEVICES, parse_device
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import BankShape
from inctrl_runtime.files import file_sha256
from inctrl_runtime.preprocess import (
    ImageSource,
    Preprocessing,
    describe,
    image_sequence,
    pixel_digest,
    preprocess_many,
)

# Image sources (a single one is a list of one), or preprocessed B x 3 x S x S pixels.
Images = ImageSource | Sequence[ImageSource] | torch.Tensor

TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device) -> torch.device:
    """The torch device asked for (``cpu``, ``cuda``, ``cuda:N``), refused in one line if it is
    not a device name or is a GPU torch does not see."""
    if not isinstance(device, torch.device):
        name = parse_device(device, TORCH_DEVICES)
        device = torch.device(name.kind, name.index)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise InputError(
                f"device {str(device)!r} asked for, but torch sees {count} CUDA GPUs; "
                "use --device cpu" + (f" or cuda:0 to cuda:{count - 1}" if count else "")
            )
    return device


class InCTRL(nn.Module):
    """InCTRL scoring on open_clip. Build with ``from_checkpoint`` or ``from_clip_weights``."""

    def __init__(self, config: InCTRLConfig, clip: open_clip.CLIP | None = None) -> None:
        super().__init__()
        self.config = config
        self.clip = clip if clip is not None else build_clip(config)
        self.inctrl_head = InCTRLHead(config)
        self.clip.requires_grad_(False)
        self.precision = "fp32"
        # On the CPU, bf16 runs a bf16 copy of the image tower (_cpu_bf16_visual); kept out of
        # the module tree so that state_dict and .to() see only the fp32 weights.
        object.__setattr__(self, "_bf16_visual", None)
        # Where the backbone weights came from: "seed:<n>", "file:<sha256>" or "included".
        self.backbone_origin = (
            f"seed:{config.backbone_seed}" if config.backbone_seed is not None else "random"
        )
        self.preprocessing = Preprocessing(size=config.vision.image_size)
        self.eval()

    # ----------------------------------------------------------------- construction, weights
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        clip_weights: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> InCTRL:
        """Load the authors' ``.pyth`` (backbone included) or our safetensors checkpoint.

        Our checkpoints that hold only head weights name their backbone; give ``clip_weights``
        (the open_clip weights file) when it is a file.
        """
        state, metadata = read_state_dict(path)
        ours = our_layout(state, metadata, path)
        if metadata.get("kind") == CHECKPOINT_KIND:
            model = cls._from_our_checkpoint(path, ours, metadata, clip_weights)
        else:
            model = cls(_infer_config(ours, path))
            model._load_checked(ours, str(path))
            model.backbone_origin = "included"
        return model.to_device(device, precision)

    @classmethod
    def _from_our_checkpoint(cls, path, state, metadata, clip_weights) -> InCTRL:
        config = InCTRLConfig.from_dict(json.loads(metadata["config"]))
        origin = metadata.get("backbone", "included")
        model = cls(config)
        if origin.startswith("file:"):
            if clip_weights is None:
                raise InputError(
                    f"{path}: holds head weights only; its backbone is a CLIP weights file "
                    f"(sha256 {origin[5:17]}...): pass it with --clip-weights"
                )
            model.load_clip_weights(clip_weights)
            if model.backbone_origin != origin:
                raise InputError(
                    f"{clip_weights}: not the CLIP weights {path} was made with (sha256 "
                    f"{model.backbone_origin[5:17]}..., expected {origin[5:17]}...)"
                )
        elif origin != "included" and origin != f"seed:{config.backbone_seed}":
            raise InputError(f"{path}: unknown backbone origin {origin!r}; recreate the file")
        if origin != "included":
            state = {**{k: v for k, v in model.state_dict().items() if not is_head_key(k)}, **state}
        model._load_checked(state, str(path))
        model.backbone_origin = origin
        return model

    @classmethod
    def from_clip_weights(
        cls,
        clip_weights: str | os.PathLike,
        heads: str | os.PathLike | None = None,
        preset: str = "ViT-B-16-plus-240",
        device: str | torch.device = "cpu",
        precision: str = "fp32",
    ) -> InCTRL:
        """Build from an open_clip weights file plus head weights (ours or the authors' file).

        Without ``heads`` the adapter and heads keep their fresh initialization (for training).
        """
        model = cls(get_config(preset))
        model.load_clip_weights(clip_weights)
        if heads is not None:
            state, metadata = read_state_dict(heads)
            head_state = {
                k: v for k, v in our_layout(state, metadata, heads).items() if is_head_key(k)
            }
            expected = {k: v for k, v in model.state_dict().items() if is_head_key(k)}
            check_state(expected, head_state, str(heads), "the InCTRL heads")
            model.load_state_dict(head_state, strict=False)
        return model.to_device(device, precision)

    def load_clip_weights(self, path: str | os.PathLike) -> None:
        """Load open_clip CLIP weights (a local file; nothing is downloaded)."""
        state, _ = read_state_dict(path)
        ours = {BACKBONE_PREFIX + k: v for k, v in state.items()}
        expected = {k: v for k, v in self.state_dict().items() if k.startswith(BACKBONE_PREFIX)}
        check_state(expected, ours, str(path), f"open_clip {self.config.name}")
        self.load_state_dict(ours, strict=False)
        self.backbone_origin = f"file:{file_sha256(path)}"

    def _load_checked(self, state: dict[str, torch.Tensor], source: str) -> None:
        check_state(self.state_dict(), state, source, f"InCTRL {self.config.name}")
        self.load_state_dict(state, strict=False)

    def save(self, path: str | os.PathLike, include_backbone: bool | None = None) -> None:
        """Write our checkpoint (safetensors). By default the backbone is included unless it
        came from a CLIP weights file, in which case that file's sha256 is recorded."""
        if include_backbone is None:
            include_backbone = not self.backbone_origin.startswith("file:")
        if not include_backbone and not self.backbone_origin.startswith(("file:", "seed:")):
            raise InputError(
                f"cannot save heads only: the backbone ({self.backbone_origin}) could not be "
                "rebuilt from a file or seed; save with the backbone included"
            )
        state = self.state_dict()
        if not include_backbone:
            state = {k: v for k, v in state.items() if is_head_key(k)}
        origin = "included" if include_backbone else self.backbone_origin
        save_checkpoint(path, state, self.config.to_dict(), origin)

    def to_device(self, device: str | torch.device = "cpu", precision: str = "fp32") -> InCTRL:
        """Move to a device and pick the image encoder precision: fp16/bf16 run under autocast,
        except bf16 on the CPU, which runs a bf16 copy of the (frozen) image tower."""
        device = resolve_device(device)
        if precision not in TORCH_DTYPES:
            raise InputError(f"unknown precision {precision!r}; choose fp32, fp16 or bf16")
        if precision == "fp16" and device.type != "cuda":
            raise InputError("fp16 needs a CUDA device; on CPU use fp32 or bf16")
        self.precision = precision
        object.__setattr__(self, "_bf16_visual", None)
        return self.to(device)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        object.__setattr__(self, "_bf16_visual", None)  # rebuilt from the new weights when used
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def device(self) -> torch.device:
        return self.inctrl_head.adapter.fc[0].weight.device

    # ----------------------------------------------------------------------- the model proper
    @contextlib.contextmanager
    def _encoder_precision(self) -> Iterator[None]:
        if self.precision == "fp32":
            yield
        else:
            with torch.autocast(self.device.type, dtype=TORCH_DTYPES[self.precision]):
                yield

    def pixels(self, images: Images) -> torch.Tensor:
        """Preprocess image sources into a B x 3 x S x S tensor on the model's device."""
        if isinstance(images, torch.Tensor):
            return images.to(self.device, torch.float32)
        return torch.from_numpy(preprocess_many(images, self.preprocessing)).to(self.device)

    def encode(self, pixels: torch.Tensor) -> ImageFeatures:
        """Image features in fp32 whatever the encoder precision."""
        if self.precision == "bf16" and pixels.device.type == "cpu":
            features = encode_images(self._cpu_bf16_visual(), self.config, pixels.bfloat16())
        else:
            with self._encoder_precision():
                features = encode_images(self.clip.visual, self.config, pixels)
        return ImageFeatures(features.embedding.float(), features.patches.float())

    def _cpu_bf16_visual(self) -> nn.Module:
        """A bf16 copy of the frozen image tower, made on first use.

        torch's CPU autocast sends nn.MultiheadAttention down its slow path, where a bf16 batch
        of more than one image costs ~10x (F.linear on a non-contiguous input expands the weight
        per token); bf16 weights take the fused path and are as accurate.
        """
        if self._bf16_visual is None:
            lowp = copy.deepcopy(self.clip.visual).to(torch.bfloat16)
            object.__setattr__(self, "_bf16_visual", lowp)
        return self._bf16_visual

    def head(self, features: ImageFeatures, bank: ReferenceBank, prior: TextPrior) -> Scores:
        """Score encoded queries against a reference bank and a text prior."""
        return self.inctrl_head.residual_scores(
            features, bank.patches, bank.adapted_mean, prior.matrix()
        )

    def forward(self, pixels: torch.Tensor, bank: ReferenceBank, prior: TextPrior) -> Scores:
        return self.head(self.encode(pixels), bank, prior)

    # ------------------------------------------------------------------- few-shot state, scoring
    @torch.no_grad()
    def reference(self, prompt_images: Images, batch_size: int = 16) -> ReferenceBank:
        """Encode the k normal prompt images of a category once into a ReferenceBank."""
        prompt_images = image_sequence(prompt_images)
        if len(prompt_images) == 0:
            raise InputError("no prompt images: give at least one normal image of the category")
        pixels = self.pixels(prompt_images)
        features = [self.encode(chunk) for chunk in pixels.split(batch_size)]
        embedding = torch.cat([f.embedding for f in features])
        patches = torch.cat([f.patches for f in features])  # k x L x P x D
        patches, adapted_mean = self.inctrl_head.reference(ImageFeatures(embedding, patches))
        shots = len(pixels)
        sources = (
            tuple(f"<tensor {i}>" for i in range(shots))
            if isinstance(prompt_images, torch.Tensor)
            else tuple(describe(s) for s in prompt_images)
        )
        return ReferenceBank(
            patches=patches.contiguous(),
            adapted_mean=adapted_mean,
            shots=shots,
            sources=sources,
            digests=tuple(pixel_digest(p) for p in pixels.cpu().numpy()),
        )

    @torch.no_grad()
    def text_prior(self, category: str) -> TextPrior:
        """Encode a category's prompt ensemble once into a TextPrior (242 prompts, or 2)."""
        if not category or not category.strip():
            raise InputError("empty category name")
        normal_texts, anomaly_texts = prompt_ensemble(category)
        tokenizer = make_tokenizer(self.config)
        with self._encoder_precision():
            embeddings = encode_texts(self.clip, tokenizer, normal_texts + anomaly_texts).float()
        normal, anomaly = embeddings.split([len(normal_texts), len(anomaly_texts)])
        return TextPrior(
            category=category,
            normal=residual.unit(normal.mean(dim=0)),
            anomaly=residual.unit(anomaly.mean(dim=0)),
        )

    def check_compatible(self, bank: ReferenceBank, prior: TextPrior) -> None:
        """Refuse few-shot state made by a model of other shapes, in one readable line."""
        config = self.config
        shape = BankShape(
            len(config.vision.tapped_blocks),
            config.vision.num_patches,
            config.vision.width,
            config.embed_dim,
        )
        problem = shape.problem(
            bank.patches.shape, bank.adapted_mean.shape, bank.shots, f"this {config.name} model"
        )
        if problem:
            raise InputError(
                f"reference bank ({', '.join(bank.sources[:2]) or 'given'}) does not fit this "
                f"model ({problem}); rebuild it with this model"
            )
        if prior.normal.shape[-1] != config.embed_dim:
            raise InputError(
                f"text prior of {prior.category!r} has {prior.normal.shape[-1]} dims, this "
                f"{config.name} model {config.embed_dim}; recompute it with this model"
            )

    @torch.no_grad()
    def score(
        self, images: Images, bank: ReferenceBank, prior: TextPrior, batch_size: int = 16
    ) -> Scores:
        """Score query images in batches of ``batch_size``; each query's score is independent
        of the batch it lands in."""
        images = image_sequence(images)
        if batch_size < 1:
            raise InputError(f"batch size must be at least 1, got {batch_size}")
        if len(images) == 0:
            raise InputError("no query images given")
        self.check_compatible(bank, prior)
        bank, prior = bank.to(self.device), prior.to(self.device)
        chunks = [
            self(self.pixels(images[i : i + batch_size]), bank, prior)
            for i in range(0, len(images), batch_size)
        ]
        return Scores(*(torch.cat(field) for field in zip(*chunks, strict=True)))


def _infer_config(state: dict[str, torch.Tensor], path: str | os.PathLike) -> InCTRLConfig:
    """Pick the preset whose shapes a checkpoint in the authors' layout has."""
    conv = state.get(BACKBONE_PREFIX + "visual.conv1.weight")
    if conv is None:
        raise InputError(f"{path}: has no 'visual.conv1.weight'; not an InCTRL/CLIP checkpoint")
    for make in PRESETS.values():
        config = make()
        if config.vision.width == conv.shape[0] and config.vision.patch_size == conv.shape[-1]:
            return config
    raise InputError(
        f"{path}: 'visual.conv1.weight' has shape {tuple(conv.shape)} (width {conv.shape[0]}, "
        f"patch {conv.shape[-1]}), which fits no preset ({', '.join(PRESETS)})"
    )
