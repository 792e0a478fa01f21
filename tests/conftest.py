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


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model: InCTRL):
    """The tiny model (seeded backbone, perturbed heads) saved as our checkpoint."""
    path = tmp_path_factory.mktemp("checkpoint") / "tiny.safetensors"
    tiny_model.save(path)
    return path


BUNDLE_CATEGORIES = ("candle", "metal_nut")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_checkpoint):
    """The tiny checkpoint exported (fp32) with its self-check; copy it before changing it."""
    from inctrl_export.bundle import export_bundle

    out = tmp_path_factory.mktemp("bundles") / "tiny"
    export_bundle(out, tiny_checkpoint, BUNDLE_CATEGORIES)
    return out


def run_command(module: str, *args: str, cwd=None, timeout: float = 300):
    """Run a real command line (the ``main`` of ``module``, e.g. ``inctrl_runtime.cli``) in a
    subprocess, as a user would, and capture it."""
    import subprocess
    import sys

    code = f"import sys; from {module} import main; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def run_inctrl(*args: str, cwd=None, timeout: float = 300):
    """Run the real `inctrl` command line in a subprocess and capture it."""
    return run_command("inctrl.cli", *args, cwd=cwd, timeout=timeout)
