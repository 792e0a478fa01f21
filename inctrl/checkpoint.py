"""Reading and writing model weights without ever executing code from a file.

Three kinds of file:
- the authors' ``.pyth`` (a torch pickle, read with ``weights_only=True``): a state dict or
  ``{"model_state": state_dict}`` in the open_clip CLIP layout plus ``adapter.*``,
  ``diff_head.*`` and ``diff_head_ref.*``;
- open_clip CLIP weights (``.pt``/``.bin`` torch pickle or ``.safetensors``);
- our checkpoint: one safetensors file whose metadata holds the config and where the backbone
  comes from. Its keys are our module's: the backbone under ``clip.``, the head under
  ``inctrl_head.`` (format 2); format 1 kept the head keys as the authors' (still read).
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from inctrl.files import read_safetensors
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path

CHECKPOINT_KIND = "inctrl.checkpoint"
FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", FORMAT_VERSION)

# Our module keeps the open_clip model and the InCTRLHead under these attributes; the authors'
# keys have no prefix: theirs are the backbone's keys and the head's own (AUTHORS_HEAD_PREFIXES).
BACKBONE_PREFIX = "clip."
HEAD_PREFIX = "inctrl_head."
AUTHORS_HEAD_PREFIXES = ("adapter.", "diff_head.", "diff_head_ref.")
# Present in open_clip models and weight files, unused by InCTRL, absent from the authors' files.
OPTIONAL_KEYS = frozenset({"clip.logit_scale"})


def is_head_key(key: str) -> bool:
    """Whether a key belongs to the trainable head, in our layout or the authors'."""
    return key.startswith(HEAD_PREFIX) or _authors_head(key)


def _authors_head(key: str) -> bool:
    return key.startswith(AUTHORS_HEAD_PREFIXES)


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("model_state", "state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: holds no state dict of tensors")
    # DistributedDataParallel saves keys under "module.".
    return {k.removeprefix("module."): v for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file or a torch pickle (loaded with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint file")
    try:
        return read_safetensors(path)
    except (SafetensorError, OSError, ValueError):
        pass  # not safetensors: try a torch pickle
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's own message suggests weights_only=False, which would let the file run code.
        raise InputError(
            f"{path}: not a trusted checkpoint: it pickles Python objects other than tensors, "
            "which inctrl never unpickles (that can run code); save the state dict alone "
            "(torch.save(model.state_dict(), ...)) or as safetensors"
        ) from None
    except Exception as err:  # torch raises many types for foreign or hostile files
        reason = str(err).strip().split("\n")[0][:200] or type(err).__name__
        raise InputError(
            f"{path}: not a readable checkpoint ({reason}); give a torch state dict (.pyth/.pt) "
            "or a safetensors file"
        ) from None
    return _unwrap(obj, path), {}


def authors_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename authors'/open_clip keys to our module's: head keys go under ``inctrl_head.``,
    backbone keys under ``clip.``."""
    return {(HEAD_PREFIX if _authors_head(k) else BACKBONE_PREFIX) + k: v for k, v in state.items()}


def ours_to_authors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`authors_to_ours`, without the keys the authors' files lack."""
    return {
        k.removeprefix(HEAD_PREFIX).removeprefix(BACKBONE_PREFIX): v
        for k, v in state.items()
        if k not in OPTIONAL_KEYS
    }


def our_layout(
    state: Mapping[str, torch.Tensor], metadata: Mapping[str, str], path: str | os.PathLike
) -> dict[str, torch.Tensor]:
    """The tensors of a file (as ``read_state_dict`` gives them) under our module's keys: from
    the authors' layout, from our format 1 (head keys as the authors') or our current format."""
    if metadata.get("kind") != CHECKPOINT_KIND:
        return authors_to_ours(state)
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        raise InputError(
            f"{path}: checkpoint format {version}, but this inctrl reads formats "
            f"{', '.join(READABLE_VERSIONS)}; use the inctrl version that wrote it"
        )
    if version == "1":
        return {(HEAD_PREFIX + k if _authors_head(k) else k): v for k, v in state.items()}
    return dict(state)


def _preview(keys: Iterable[str], limit: int = 4) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def check_state(
    expected: Mapping[str, torch.Tensor],
    got: Mapping[str, torch.Tensor],
    source: str,
    target: str,
    optional: Iterable[str] = OPTIONAL_KEYS,
) -> None:
    """Raise one readable InputError if ``got`` does not fit ``expected`` key for key and shape."""
    optional = set(optional)
    missing = set(expected) - set(got) - optional
    unexpected = set(got) - set(expected)
    wrong = [
        f"{k} {tuple(got[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in got and tuple(got[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_preview(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_preview(unexpected)}")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatch(es): {'; '.join(wrong[:3])}")
    if problems:
        raise InputError(f"{source}: does not fit {target}: " + "; ".join(problems))


def save_checkpoint(
    path: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    config: dict,
    backbone: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    """Write our checkpoint atomically: tensors plus config and backbone identity as metadata.

    ``backbone`` says where the backbone comes from: ``included`` (its tensors are in the file),
    ``seed:<n>`` or ``file:<sha256>`` of the CLIP weights file it must be loaded with.
    """
    metadata = {
        "kind": CHECKPOINT_KIND,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(config),
        "backbone": backbone,
        **(extra or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
