"""Shared fixtures: a tiny seeded model and seeded random images (no network, no files needed)."""

from __future__ import annotations

import numpy as np
import pytest

from inctrl import InCTRL, get_config


def perturb_heads(model: InCTRL, seed: int = 1) -> InCTRL:
    """Give the adapter and heads seeded non-default weights and BatchNorm statistics, so that a
    test fails if they are not loaded or not used."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for name, tensor in model.state_dict().items():
        if name.startswith(("adapter.", "diff_head")) and tensor.is_floating_point():
            values = torch.rand(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + values)
            else:
                tensor.copy_((values - 0.5) * 0.4)
    return model


@pytest.fixture(scope="session")
def tiny_model() -> InCTRL:
    return perturb_heads(InCTRL(get_config("tiny")))


def random_images(
    count: int, seed: int = 0, size: tuple[int, int] = (260, 300)
) -> list[np.ndarray]:
    """Seeded random uint8 RGB images, H x W x 3."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for _ in range(count)]


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    return random_images(8, seed=0)


def run_inctrl(*args: str, cwd=None, timeout: float = 300):
    """Run the real `inctrl` command line in a subprocess (as a user would) and capture it."""
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "inctrl", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
