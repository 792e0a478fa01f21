"""The scoring arithmetic on small hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from inctrl import residual
from inctrl.heads import Adapter, ResidualHead

pytestmark = pytest.mark.unit


def test_patch_residual_map_hand_computed() -> None:
    # One query, two layers, two patches, 2-d features.
    query = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.6, 0.8]]]])  # 1 x 2 x 2 x 2
    refs = torch.tensor([[[1.0, 0.0], [0.6, 0.8]], [[0.0, 1.0], [0.0, 1.0]]])  # 2 x 2 x 2
    # layer 1: patch 0 matches exactly (0), patch 1 best cos 0.8 -> 0.1
    # layer 2: patch 0 matches exactly (0), patch 1 best cos 0.8 -> 0.1
    expected = torch.tensor([[0.0, 0.1]])
    assert torch.allclose(residual.patch_residual_map(query, refs), expected, atol=1e-7)


def test_patch_residual_map_takes_min_distance_over_all_prompt_patches() -> None:
    query = torch.tensor([[[[0.0, 1.0]]]])  # 1 x 1 x 1 x 2
    refs = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]]])  # cos 0, 0, -1
    assert torch.allclose(residual.patch_residual_map(query, refs), torch.tensor([[0.5]]))


def test_image_residual_is_prompts_minus_query() -> None:
    query = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    ref = torch.tensor([4.0, 4.0])
    assert torch.equal(residual.image_residual(query, ref), torch.tensor([[3.0, 2.0], [1.0, -1.0]]))


def test_text_anomaly_score_hand_computed() -> None:
    embedding = torch.tensor([[3.0, 4.0], [4.0, 3.0]])  # unit: (0.6, 0.8) and (0.8, 0.6)
    prior = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # normal, anomaly
    got = residual.text_anomaly_score(embedding, prior, temperature=100.0)
    # softmax([60, 80])[1] = 1 / (1 + e^-20); softmax([80, 60])[1] = 1 / (1 + e^20)
    expected = torch.tensor([1 / (1 + math.exp(-20.0)), 1 / (1 + math.exp(20.0))])
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-12)


def test_holistic_map_broadcasts_scalars_and_final_score_averages() -> None:
    patch_map = torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.0, 0.5]])
    got = residual.holistic_map(patch_map, torch.tensor([0.5, 0.25]), torch.tensor([0.1, 0.0]))
    assert torch.allclose(got, torch.tensor([[0.7, 0.8, 0.9], [0.25, 0.25, 0.75]]))
    final = residual.final_score(torch.tensor([0.2, 0.6]), torch.tensor([0.4, 0.2]))
    assert torch.allclose(final, torch.tensor([0.3, 0.4]))


def test_residual_head_applies_layers_in_the_authors_order() -> None:
    torch.manual_seed(0)
    head = ResidualHead(6, hidden=(5, 4))
    for bn in (head.bn1, head.bn2, head.bn3):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    head.eval()
    x = torch.randn(3, 6)

    def batchnorm(v: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
        return (v - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias

    # bn1 is never applied: Linear -> ReLU -> bn2 -> Linear -> ReLU -> bn3 -> Linear -> sigmoid
    h = batchnorm(torch.relu(x @ head.projection1.weight.T + head.projection1.bias), head.bn2)
    h = batchnorm(torch.relu(h @ head.projection2.weight.T + head.projection2.bias), head.bn3)
    expected = torch.sigmoid(h @ head.projection3.weight.T + head.projection3.bias)[:, 0]
    with torch.no_grad():
        assert torch.allclose(head(x), expected, atol=1e-6)


def test_adapter_is_two_relu_linear_layers_without_bias() -> None:
    adapter = Adapter(8, reduction=4)
    assert [tuple(p.shape) for p in adapter.parameters()] == [(2, 8), (8, 2)]
    x = torch.randn(3, 8)
    w1, w2 = adapter.fc[0].weight, adapter.fc[2].weight
    with torch.no_grad():
        assert torch.allclose(adapter(x), torch.relu(torch.relu(x @ w1.T) @ w2.T))
