"""A category's reference bank as the runtime keeps it: numpy arrays in one ``.npz`` file.

The bank records the sha256 of the encoder that made it, so a bank registered with one bundle
is never used with another model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path

_ARRAYS = ("patches", "adapted_mean", "shots", "sources", "digests", "encoder_sha256")


@dataclass(frozen=True)
class NumpyBank:
    """What the k normal prompt images of one category contribute to scoring, as numpy arrays
    (the runtime's counterpart of ``inctrl.ReferenceBank``, which holds torch tensors).

    Attributes:
        patches: L x N x D float32, the tapped patch tokens of all prompts (N = k * P), unit norm.
        adapted_mean: E float32, mean over prompts of the adapted embeddings.
        shots: k.
        sources: where each prompt image came from.
        digests: sha256 of each preprocessed prompt image (float32 bytes, as ``inctrl``'s).
        encoder_sha256: the encoder.onnx that made it.
    """

    patches: np.ndarray
    adapted_mean: np.ndarray
    shots: int
    sources: tuple[str, ...]
    digests: tuple[str, ...]
    encoder_sha256: str

    def save(self, path: str | os.PathLike) -> None:
        """Write the bank as ``.npz`` (no pickled objects), atomically."""
        with atomic_path(path) as tmp, open(tmp, "wb") as handle:
            np.savez(
                handle,
                patches=np.ascontiguousarray(self.patches, dtype=np.float32),
                adapted_mean=np.ascontiguousarray(self.adapted_mean, dtype=np.float32),
                shots=np.int64(self.shots),
                sources=np.array(self.sources, dtype=np.str_),
                digests=np.array(self.digests, dtype=np.str_),
                encoder_sha256=np.str_(self.encoder_sha256),
            )

    @classmethod
    def load(cls, path: str | os.PathLike, encoder_sha256: str | None = None) -> NumpyBank:
        """Read a bank; with ``encoder_sha256``, refuse one made by another encoder."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = [name for name in _ARRAYS if name not in data.files]
                if missing:
                    raise InputError(
                        f"{path}: incomplete reference bank, lacks {', '.join(missing)}; "
                        "register the category again"
                    )
                bank = cls(
                    patches=data["patches"],
                    adapted_mean=data["adapted_mean"],
                    shots=int(data["shots"]),
                    sources=tuple(str(s) for s in data["sources"]),
                    digests=tuple(str(d) for d in data["digests"]),
                    encoder_sha256=str(data["encoder_sha256"]),
                )
        except (OSError, ValueError, EOFError) as err:
            raise InputError(
                f"{path}: not a readable reference bank ({err}); register the category again"
            ) from None
        if encoder_sha256 is not None and bank.encoder_sha256 != encoder_sha256:
            raise InputError(
                f"{path}: registered with another encoder (sha256 {bank.encoder_sha256[:12]}...), "
                f"not this bundle's ({encoder_sha256[:12]}...); register the category again"
            )
        return bank
