"""The trainable parts of InCTRL: the adapter and the residual heads.

Attribute names follow the authors' checkpoints (``fc``, ``projection1..3``, ``bn1..3``) so that
their state dicts load as they are.
"""

from __future__ import annotations

import torch
from torch import nn


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
    carries it.
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn2(torch.relu(self.projection1(x)))
        x = self.bn3(torch.relu(self.projection2(x)))
        return torch.sigmoid(self.projection3(x)).squeeze(-1)
