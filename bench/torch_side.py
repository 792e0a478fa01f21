"""The torch backends (``authors``, ``torch-*``) and the steps that need torch: a seeded preset
checkpoint and temporary bundles. Imported only when one of them runs (DESIGN.md).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from inctrl import InCTRL, get_config
from inctrl.backbone import ImageFeatures, make_tokenizer
from inctrl.demo import load_model
from inctrl.residual import Scores
from inctrl.state import ReferenceBank, TextPrior
from inctrl.text import prompt_ensemble
from inctrl_bench.backends import Backend
from inctrl_bench.flops import ModelShape, authors_query_flops
from inctrl_bench.runners import Images, Runner
from inctrl_bench.timing import StageClock

PROMPTS, TEXT = "prompts", "text prior"


def authors_text_prior(model: InCTRL, category: str) -> TextPrior:
    """The text prior as the authors compute it: open_clip's text forward over the full
    77-token context, normal and anomaly prompts in two calls (ours drops the padding)."""
    tokenizer = make_tokenizer(model.config)
    device = model.device
    normal, anomaly = prompt_ensemble(category)
    t_n = model.clip.encode_text(tokenizer(normal).to(device), normalize=True).mean(dim=0)
    t_a = model.clip.encode_text(tokenizer(anomaly).to(device), normalize=True).mean(dim=0)
    return TextPrior(category, t_n / t_n.norm(), t_a / t_a.norm())


class TorchRunner(Runner):
    """The PyTorch model (``inctrl.InCTRL``) at the backend's precision, under inference mode."""

    def __init__(self, backend: Backend, model: InCTRL) -> None:
        shape = ModelShape.from_config(model.config.to_dict())
        super().__init__(backend, shape, model.device.type)
        self.model = model
        self.bank: ReferenceBank | None = None
        self.prior: TextPrior | None = None

    def pixels(self, images: Images) -> torch.Tensor:
        return self.model.pixels(images)

    def encode(self, pixels: torch.Tensor) -> ImageFeatures:
        return self.model.encode(pixels)

    def head(self, features: ImageFeatures) -> Scores:
        return self.model.head(features, self.bank, self.prior)

    def reference(self, prompts: Images) -> ReferenceBank:
        return self.model.reference(prompts)

    def prepare(self, prompts: Images, category: str) -> None:
        self.bank = self.model.reference(prompts)
        self.prior = self.model.text_prior(category)
        self.shots = len(prompts)

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def session(self) -> contextlib.AbstractContextManager:
        return torch.inference_mode()

    def gpu_peak_bytes(self) -> int | None:
        return torch.cuda.max_memory_allocated() if self.device == "cuda" else None


class AuthorsRunner(TorchRunner):
    """The authors' cost model, built from our modules: every query encodes its k prompt images
    and the category's text prompts (full context) again. Batch 1 only, as theirs is right only
    there. A lower bound on their time: their head's Python loops over patches are not copied."""

    max_batch = 1
    registers = False

    def prepare(self, prompts: Images, category: str) -> None:
        self.prompts = list(prompts)
        self.category = category
        self.shots = len(prompts)

    def run(self, images: Images, clock: StageClock) -> None:
        with clock(PROMPTS):
            self.bank = self.model.reference(self.prompts)
        with clock(TEXT):
            self.prior = authors_text_prior(self.model, self.category)
        super().run(images, clock)

    def flops_per_query(self) -> int:
        text_prompts = sum(len(texts) for texts in prompt_ensemble(self.category))
        return authors_query_flops(self.shape, self.shots, text_prompts)


def open_torch_runner(backend: Backend, checkpoint: Path | None, device: str) -> TorchRunner:
    """Load the checkpoint (None: the embedded demo) at the backend's precision."""
    if device == "cuda":
        # The GPU peak covers the window of the RSS peak: loading and the measurements.
        torch.cuda.reset_peak_memory_stats()
    model = load_model(checkpoint, device=device, precision=backend.precision)
    runner = AuthorsRunner if backend.kind == "authors" else TorchRunner
    return runner(backend, model)


def save_preset_checkpoint(preset: str, path: Path, seed: int) -> Path:
    """The full model of a preset with seeded random weights, saved with its backbone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InCTRL(get_config(preset))
    model.save(path, include_backbone=True)
    return path
