"""``train_state.safetensors``: everything a run needs to resume as if never stopped.

Tensors: the trained ``InCTRLHead`` (``model.*``, BatchNorm statistics included), the optimizer
state flattened (``optimizer.<param>.<name>``), each process's sampler (``rng.python.<rank>``,
the Mersenne Twister words as bytes, and ``sampler.<rank>.<target>``, the rest of the current
pass) and the global numpy and torch RNG states (``rng.numpy``, ``rng.torch``; uint8).
Metadata (JSON strings): epoch, global step, TrainConfig, start model, world size, the
optimizer's param groups and state layout, the small parts of the RNG states. No pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from inctrl.state import read_kind
from inctrl.training.config import TrainConfig
from inctrl.training.sampling import BalancedSampler
from inctrl_runtime.datasets import ANOMALOUS, NORMAL
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path

STATE_KIND = "inctrl.train_state"
MODEL_PREFIX = "model."
METADATA = ("epoch", "step", "config", "origin", "world_size", "optimizer", "rng")


def _as_bytes(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(words, dtype=np.uint32).view(np.uint8))


def _as_words(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy().view(np.uint32)


def save_train_state(
    path: Path,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    samplers: list[tuple],
    epoch: int,
    step: int,
    config: TrainConfig,
    origin: dict,
) -> None:
    """Write the state atomically; ``samplers`` holds ``BalancedSampler.state()`` per rank."""
    tensors = {MODEL_PREFIX + k: v for k, v in head.state_dict().items()}
    optim = optimizer.state_dict()
    layout = {"param_groups": optim["param_groups"], "state": {}}
    for index, entries in optim["state"].items():
        layout["state"][index] = sorted(entries)
        tensors.update({f"optimizer.{index}.{name}": v for name, v in entries.items()})
    python_rng = []
    for rank, ((version, words, gauss), pending) in enumerate(samplers):
        python_rng.append([version, gauss])
        tensors[f"rng.python.{rank}"] = _as_bytes(words)
        for target, queue in pending.items():
            tensors[f"sampler.{rank}.{target}"] = torch.tensor(queue, dtype=torch.int64)
    numpy_state = np.random.get_state()
    tensors["rng.numpy"] = _as_bytes(numpy_state[1])
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "kind": STATE_KIND,
        "epoch": str(epoch),
        "step": str(step),
        "config": json.dumps(config.to_dict()),
        "origin": json.dumps(origin),
        "world_size": str(len(samplers)),
        "optimizer": json.dumps(layout),
        "rng": json.dumps({"python": python_rng, "numpy": [numpy_state[0], *numpy_state[2:]]}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


def load_train_state(
    path: Path,
    head: nn.Module,
    optimizer: torch.optim.Optimizer,
    sampler: BalancedSampler,
    rank: int,
    world: int,
    config: TrainConfig,
    origin: dict,
) -> tuple[int, int]:
    """Restore a state written for the same run (settings, start model, process count; only
    ``epochs`` may grow) into ``head``, ``optimizer``, ``sampler`` and the global RNGs.

    Returns the epoch and global step it was saved at.
    """
    tensors, meta = read_kind(path, STATE_KIND, ("rng.numpy", "rng.torch"), METADATA)
    changed = TrainConfig.from_dict(json.loads(meta["config"])).changes(config, ("epochs",))
    if json.loads(meta["origin"]) != origin:
        changed.append(f"start model {meta['origin']} -> {json.dumps(origin)}")
    if int(meta["world_size"]) != world:
        changed.append(f"processes {meta['world_size']} -> {world}")
    if changed:
        raise InputError(
            f"{path}: resume with the run's own settings (only --epochs may grow): "
            + "; ".join(changed)
        )
    epoch = int(meta["epoch"])
    if config.epochs < epoch:
        raise InputError(
            f"{path}: the run has done {epoch} epochs; ask for --epochs {epoch} or more"
        )
    model = {
        k.removeprefix(MODEL_PREFIX): v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)
    }
    head.load_state_dict(model)
    layout = json.loads(meta["optimizer"])
    state = {
        int(index): {name: tensors[f"optimizer.{index}.{name}"] for name in names}
        for index, names in layout["state"].items()
    }
    optimizer.load_state_dict({"param_groups": layout["param_groups"], "state": state})
    rng = json.loads(meta["rng"])
    version, gauss = rng["python"][rank]
    words = tuple(int(w) for w in _as_words(tensors[f"rng.python.{rank}"]))
    pending = {t: tensors[f"sampler.{rank}.{t}"].tolist() for t in (NORMAL, ANOMALOUS)}
    sampler.set_state((version, words, gauss), pending)
    np.random.set_state((rng["numpy"][0], _as_words(tensors["rng.numpy"]), *rng["numpy"][1:]))
    torch.set_rng_state(tensors["rng.torch"])
    return epoch, int(meta["step"])
