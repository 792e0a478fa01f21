"""The trainable part of InCTRL: ``InCTRLHead``, the adapter and the two residual heads and the
scores they give.

Attribute names follow the authors' checkpoints (``adapter``, ``diff_head``, ``diff_head_ref``;
``fc``, ``projection1..3``, ``bn1..3``), so that their keys map one to one onto this module's.
"""

from __future__ import annotations

import torch
from torch import nn

from inctrl import residual
from inctrl.backbone import ImageFeatures
from inctrl.config import InCTRLConfig
from inctrl.residual import Scores
from inctrl_runtime.fewshot import stack_prompts


class Adapter(nn.Module):
    """Two bias-free linear layers, each followed by ReLU: ``dim -> dim / reduction -> dim``."""

    def __init__(self, dim: int, reduction: int = 4) -> None:
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(dim, dim // reduction, bias=False),
            nn.ReLU(),
            nn.Linear(dim // reduction, dim, bias=False),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ResidualHead(nn.Module):
    """Maps a residual vector ``B x in_dim`` to an anomaly probability ``B``.

    Linear -> ReLU -> BatchNorm -> Linear -> ReLU -> BatchNorm -> Linear -> sigmoid.
    ``bn1`` (over the input) is never applied; it exists because every published checkpoint
    carries it, and is frozen (DistributedDataParallel wants a gradient for every parameter).
    """

    def __init__(self, in_dim: int, hidden: tuple[int, int] = (128, 64)) -> None:
        super().__init__()
        first, second = hidden
        self.projection1 = nn.Linear(in_dim, first)
        self.projection2 = nn.Linear(first, second)
        self.projection3 = nn.Linear(second, 1)
        self.bn1 = nn.BatchNorm1d(in_dim)
        self.bn2 = nn.BatchNorm1d(first)
        self.bn3 = nn.BatchNorm1d(second)
        self.bn1.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(torch.relu(self.projection1(x)))
        x = self.bn3(torch.relu(self.projection2(x)))
        return torch.sigmoid(self.projection3(x)).squeeze(-1)


class InCTRLHead(nn.Module):
    """Everything of InCTRL that trains: the adapter, ``diff_head`` (the holistic head on the
    combined residual map) and ``diff_head_ref`` (the image-level residual head), and the
    scores they give with the pure arithmetic of ``inctrl.residual``.

    The model scores through ``residual_scores`` on a reference bank's tensors (the export's
    head graph too); training calls the module itself, each query with its own prompts, which
    is what DistributedDataParallel wraps.
    """

    def __init__(self, config: InCTRLConfig) -> None:
        super().__init__()
        head = config.head
        self.adapter = Adapter(config.embed_dim, head.adapter_reduction)
        self.diff_head = ResidualHead(config.vision.num_patches, head.hidden)
        self.diff_head_ref = ResidualHead(config.embed_dim, head.hidden)
        self.text_temperature = head.text_temperature

    def reference(self, prompts: ImageFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank tensors of k prompts: their stacked patch tokens and mean adapted embedding.

        Args:
            prompts: k x E and k x L x P x D; or B x k x E and B x k x L x P x D, one prompt
                set per query.

        Returns:
            L x kP x D and E; or B x L x kP x D and B x E.
        """
        return stack_prompts(prompts.patches), self.adapter(prompts.embedding).mean(dim=-2)

    def residual_scores(
        self,
        features: ImageFeatures,
        ref_patches: torch.Tensor,
        ref_adapted: torch.Tensor,
        text_prior: torch.Tensor,
        adapted: torch.Tensor | None = None,
    ) -> Scores:
        """The head on tensors: ``ref_patches`` L x N x D, ``ref_adapted`` E and ``text_prior``
        2 x E shared by the batch, or B x L x N x D, B x E and B x 2 x E, one per query.

        ``adapted`` (B x E, the adapter on the embeddings) is computed here unless given, as the
        exported encoder gives it."""
        if adapted is None:
            adapted = self.adapter(features.embedding)
        patch_map = residual.patch_residual_map(features.patches, ref_patches)
        image_score = self.diff_head_ref(residual.image_residual(adapted, ref_adapted))
        text_score = residual.text_anomaly_score(
            features.embedding, text_prior, self.text_temperature
        )
        holistic = self.diff_head(residual.holistic_map(patch_map, text_score, image_score))
        max_patch = patch_map.amax(dim=1)
        return Scores(
            score=residual.final_score(holistic, max_patch),
            holistic_score=holistic,
            image_residual_score=image_score,
            text_score=text_score,
            max_patch_residual=max_patch,
            patch_residual_map=patch_map,
        )

    def forward(
        self, query: ImageFeatures, prompts: ImageFeatures, text_prior: torch.Tensor
    ) -> Scores:
        """Training's form: ``query`` B x E, B x L x P x D; ``prompts`` B x k x E,
        B x k x L x P x D; ``text_prior`` B x 2 x E."""
        return self.residual_scores(query, *self.reference(prompts), text_prior)
