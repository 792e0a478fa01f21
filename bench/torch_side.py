"""The torch backends (``authors``, ``torch-*``) as measured subjects, and a preset's seeded
checkpoint. Imported only when one of them runs, so that a bundle benches without torch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch

from inctrl import InCTRL, get_config
from inctrl.backbone import make_tokenizer
from inctrl.loading import load_model
from inctrl.state import TextPrior
from inctrl.text import prompt_ensemble
from inctrl_bench.backends import Backend
from inctrl_bench.flops import ModelShape, authors_query_flops, query_flops
from inctrl_bench.machine import StageClock
from inctrl_bench.measure import Images, Prepare, Subject


def authors_text_prior(model: InCTRL, category: str) -> TextPrior:
    """The text prior as the authors compute it: open_clip's text forward over the full
    77-token context, normal and anomaly prompts in two calls (ours drops the padding)."""
    tokenizer = make_tokenizer(model.config)
    device = model.device
    normal, anomaly = prompt_ensemble(category)
    t_n = model.clip.encode_text(tokenizer(normal).to(device), normalize=True).mean(dim=0)
    t_a = model.clip.encode_text(tokenizer(anomaly).to(device), normalize=True).mean(dim=0)
    return TextPrior(category, t_n / t_n.norm(), t_a / t_a.norm())


@contextlib.contextmanager
def open_torch(backend: Backend, checkpoint: Path | None, device: str) -> Iterator[Prepare]:
    """Load the checkpoint (None: the embedded demo) at the backend's precision, and measure
    under inference mode. ``authors`` is the authors' cost model built from our modules: every
    query encodes its k prompts and the text prompts (full context) again, batch 1 only (theirs
    is right only there); a lower bound, as their head's loops over patches are not copied."""
    on_gpu = device == "cuda"
    if on_gpu:
        # The GPU peak covers the window of the RSS peak: loading and the measurements.
        torch.cuda.reset_peak_memory_stats()
    model = load_model(checkpoint, device=device, precision=backend.precision)
    shape = ModelShape.from_config(model.config.to_dict())
    sync = torch.cuda.synchronize if on_gpu else lambda: None

    def prepare(prompts: Images, category: str) -> Subject:
        state = {"bank": model.reference(prompts)}
        make_tokenizer(model.config)  # built once per process, not a cost of each text prior
        clock = StageClock(sync)
        state["prior"] = clock("ours", model.text_prior, category)
        clock("authors", authors_text_prior, model, category)
        subject = Subject(
            shape,
            model.pixels,
            model.encode,
            lambda features: model.head(features, state["bank"], state["prior"]),
            model.reference,
            query_flops(shape, len(prompts)),
            sync=sync,
            gpu_peak_bytes=torch.cuda.max_memory_allocated if on_gpu else lambda: None,
            text_prior_ms={way: seconds * 1e3 for way, seconds in clock.seconds.items()},
            final_scores=lambda scores: scores.score.double().cpu().numpy(),
        )
        if backend.kind == "authors":
            text_prompts = sum(len(texts) for texts in prompt_ensemble(category))
            subject.flops_per_query = authors_query_flops(shape, len(prompts), text_prompts)
            subject.register, subject.max_batch = None, 1
            subject.before = {
                "prompts": lambda: state.update(bank=model.reference(prompts)),
                "text prior": lambda: state.update(prior=authors_text_prior(model, category)),
            }
        return subject

    with torch.inference_mode():
        yield prepare


def save_preset_checkpoint(preset: str, path: Path, seed: int) -> Path:
    """The full model of a preset with seeded random weights, saved with its backbone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = InCTRL(get_config(preset))
    model.save(path, include_backbone=True)
    return path
