"""The scoring arithmetic of InCTRL as pure functions on batched tensors.

Shapes use B (queries), L (tapped layers), P (patches, 225), N (prompt patches, k * P),
D (vision width) and E (embedding dim). Nothing here loops over patches or images.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Scores(NamedTuple):
    """Every output of the InCTRL head; each field is batched (first dim B).

    The ONNX export names its outputs after these fields and the runtime mirrors them.
    """

    score: torch.Tensor  # B: final anomaly score (holistic + max patch residual) / 2
    holistic_score: torch.Tensor  # B: the holistic head on the combined residual map
    image_residual_score: torch.Tensor  # B: the image-level residual head
    text_score: torch.Tensor  # B: probability of the anomaly text prior
    max_patch_residual: torch.Tensor  # B: max of the patch residual map
    patch_residual_map: torch.Tensor  # B x P, row-major over the patch grid


def unit(x: torch.Tensor) -> torch.Tensor:
    """Divide by the L2 norm over the last dim (as the authors do, without an epsilon)."""
    return x / x.norm(dim=-1, keepdim=True)


def patch_residual_map(query_patches: torch.Tensor, ref_patches: torch.Tensor) -> torch.Tensor:
    """Mean over layers of each query patch's distance to its nearest prompt patch.

    Args:
        query_patches: B x L x P x D, unit L2 norm.
        ref_patches: L x N x D, unit L2 norm, all prompt patches of one category shared by the
            batch; or B x L x N x D, each query with its own prompts (training).

    Returns:
        B x P: ``mean_l min_j 0.5 * (1 - cos(q_l,i, r_l,j))``.
    """
    if ref_patches.dim() == 3:
        ref_patches = ref_patches.unsqueeze(0)
    # One batched matmul over all layers: B x L x P x N cosine similarities.
    similarity = torch.matmul(query_patches, ref_patches.transpose(-1, -2))
    # 0.5 * (1 - x) is decreasing, so the min distance is taken at the max similarity.
    nearest = 0.5 * (1.0 - similarity.amax(dim=-1))
    return nearest.mean(dim=1)


def image_residual(query_adapted: torch.Tensor, ref_adapted_mean: torch.Tensor) -> torch.Tensor:
    """Prompt-minus-query residual of adapted embeddings: B x E from B x E and E (or B x E)."""
    return ref_adapted_mean - query_adapted


def text_anomaly_score(
    embedding: torch.Tensor, text_prior: torch.Tensor, temperature: float = 100.0
) -> torch.Tensor:
    """Probability that each image matches the anomaly prompt more than the normal one.

    Args:
        embedding: B x E image embeddings (not normalized).
        text_prior: 2 x E, rows (normal, anomaly), unit norm; or B x 2 x E, one per query.

    Returns:
        B: ``softmax(temperature * [v . t_n, v . t_a])[1]`` with ``v = e / |e|``.
    """
    similarity = torch.matmul(unit(embedding).unsqueeze(1), text_prior.transpose(-1, -2))
    return (temperature * similarity.squeeze(1)).softmax(dim=-1)[:, 1]


def holistic_map(
    patch_map: torch.Tensor, text_score: torch.Tensor, image_residual_score: torch.Tensor
) -> torch.Tensor:
    """The holistic head's input: B x P map plus the two B scalars broadcast over patches."""
    return text_score.unsqueeze(1) + image_residual_score.unsqueeze(1) + patch_map


def final_score(holistic_score: torch.Tensor, max_patch_residual: torch.Tensor) -> torch.Tensor:
    """Average of the holistic score and the largest patch residual: B."""
    return (holistic_score + max_patch_residual) / 2
