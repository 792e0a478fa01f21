"""Few-shot state as explicit values: a prompt set's reference bank, a category's text prior.

Both are computed once, passed to scoring, and saved or loaded as safetensors (no pickle). Files
are written atomically.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from inctrl.files import read_safetensors
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path

_BANK_KIND = "inctrl.reference_bank"
_PRIOR_KIND = "inctrl.text_prior"


def read_kind(
    path: str | os.PathLike, kind: str, tensor_names: tuple[str, ...], meta_names: tuple[str, ...]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of one of our safetensors files, checked: its ``kind`` metadata and
    the tensors and metadata entries it must hold. Anything else is a one-line InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    try:
        tensors, metadata = read_safetensors(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise InputError(f"{path}: not a readable safetensors file ({err})") from None
    if metadata.get("kind") != kind:
        raise InputError(f"{path}: not a {kind} file (it says {metadata.get('kind')!r})")
    missing = [n for n in tensor_names if n not in tensors] + [
        n for n in meta_names if n not in metadata
    ]
    if missing:
        raise InputError(f"{path}: incomplete {kind} file, lacks {', '.join(missing)}; recreate it")
    return tensors, metadata


@dataclass(frozen=True)
class ReferenceBank:
    """Everything the k normal prompt images of one category contribute to scoring.

    Attributes:
        patches: L x N x D tapped patch tokens of all prompts (N = k * P), unit L2 norm.
        adapted_mean: E, mean over prompts of the adapted embeddings ``A(e(s_j))``.
        shots: k, the number of prompt images.
        sources: where each prompt image came from (path or a description).
        digests: sha256 of each preprocessed prompt image.
    """

    patches: torch.Tensor
    adapted_mean: torch.Tensor
    shots: int
    sources: tuple[str, ...] = ()
    digests: tuple[str, ...] = ()

    def to(self, device: torch.device | str) -> ReferenceBank:
        return ReferenceBank(
            self.patches.to(device),
            self.adapted_mean.to(device),
            self.shots,
            self.sources,
            self.digests,
        )

    def save(self, path: str | os.PathLike) -> None:
        metadata = {
            "kind": _BANK_KIND,
            "shots": str(self.shots),
            "sources": json.dumps(list(self.sources)),
            "digests": json.dumps(list(self.digests)),
        }
        tensors = {
            "patches": self.patches.detach().float().cpu().contiguous(),
            "adapted_mean": self.adapted_mean.detach().float().cpu().contiguous(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ReferenceBank:
        """Read a bank file, checked to be whole (ranks, dtype, counts, finite values); whether
        it fits a model is ``InCTRL.check_compatible``'s."""
        tensors, meta = read_kind(path, _BANK_KIND, ("patches", "adapted_mean"), ("shots",))
        patches, adapted = tensors["patches"], tensors["adapted_mean"]
        try:
            shots = int(meta["shots"])
            sources = tuple(str(s) for s in json.loads(meta.get("sources", "[]")))
            digests = tuple(str(d) for d in json.loads(meta.get("digests", "[]")))
        except (ValueError, TypeError) as err:
            message = f"{path}: damaged reference bank metadata ({err}); recreate it"
            raise InputError(message) from None
        if patches.dtype != torch.float32 or adapted.dtype != torch.float32:
            problem = f"tensors of {patches.dtype} and {adapted.dtype}, not float32"
        elif patches.dim() != 3 or adapted.dim() != 1 or shots < 1 or patches.shape[1] == 0:
            problem = f"{shots} prompts, patches {tuple(patches.shape)}"
        elif not (torch.isfinite(patches).all() and torch.isfinite(adapted).all()):
            problem = "values that are not finite numbers"
        else:
            return cls(patches, adapted, shots, sources, digests)
        raise InputError(f"{path}: not a valid reference bank ({problem}); recreate it")


@dataclass(frozen=True)
class TextPrior:
    """The normal and anomaly text directions of one category, each a unit vector of size E."""

    category: str
    normal: torch.Tensor
    anomaly: torch.Tensor

    def matrix(self) -> torch.Tensor:
        """2 x E, rows (normal, anomaly): the layout the scoring functions take."""
        return torch.stack([self.normal, self.anomaly])

    def to(self, device: torch.device | str) -> TextPrior:
        return TextPrior(self.category, self.normal.to(device), self.anomaly.to(device))

    def save(self, path: str | os.PathLike) -> None:
        tensors = {
            "normal": self.normal.detach().float().cpu().contiguous(),
            "anomaly": self.anomaly.detach().float().cpu().contiguous(),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata={"kind": _PRIOR_KIND, "category": self.category})

    @classmethod
    def load(cls, path: str | os.PathLike) -> TextPrior:
        tensors, meta = read_kind(path, _PRIOR_KIND, ("normal", "anomaly"), ("category",))
        return cls(meta["category"], tensors["normal"], tensors["anomaly"])
