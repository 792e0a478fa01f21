"""The training loop: one process, or one rank of a ``torchrun`` job (DistributedDataParallel).

Under torchrun (WORLD_SIZE > 1) each process joins the group (gloo on CPU, nccl on CUDA), draws
its own batches (seed + rank) of ``batch_size // world_size`` queries and runs the model's
``InCTRLHead`` (all that trains) through DDP, which averages its gradients; only rank 0 writes
files and shows progress.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    track,
)
from torch.nn.parallel import DistributedDataParallel

from inctrl.backbone import ImageFeatures
from inctrl.config import get_config
from inctrl.data import load_samples
from inctrl.model import InCTRL, resolve_device
from inctrl.training.config import TrainConfig
from inctrl.training.loss import focal_loss
from inctrl.training.sampling import BalancedSampler, TrainingSet, training_set
from inctrl.training.state import load_train_state, save_train_state
from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path, make_folder

DEFAULT_PRESET = "ViT-B-16-plus-240"
# Keep the features of all training images when they take at most this much memory.
CACHE_LIMIT_BYTES = 4 * 2**30
ENCODE_BATCH = 32
STATE_FILE, LAST_FILE, METRICS_FILE = "train_state.safetensors", "last.safetensors", "metrics.jsonl"


class FeatureStore:
    """Image features for training. The backbone is frozen and preprocessing deterministic, so
    all images are encoded once and kept on the device when they fit in ``limit_bytes``;
    otherwise the distinct images of each step are encoded for that step."""

    def __init__(
        self, model: InCTRL, images: Sequence[str], limit_bytes: int, console: Console | None
    ) -> None:
        self.model, self.images = model, images
        vision = model.config.vision
        tokens = len(vision.tapped_blocks) * vision.num_patches * vision.width
        per_image = 4 * (model.config.embed_dim + tokens)  # fp32
        fits = per_image * len(images) <= limit_bytes
        self.cached = self._encode(list(range(len(images))), console) if fits else None

    @torch.no_grad()
    def _encode(self, indices: list[int], console: Console | None = None) -> ImageFeatures:
        chunks = [indices[i : i + ENCODE_BATCH] for i in range(0, len(indices), ENCODE_BATCH)]
        shown = track(chunks, "encoding images", console=console, disable=console is None)
        parts = [self.model.encode(self.model.pixels([self.images[i] for i in c])) for c in shown]
        return ImageFeatures(*(torch.cat(field) for field in zip(*parts, strict=True)))

    def features(self, indices: torch.Tensor) -> ImageFeatures:
        """Features of images by index, the index tensor's shape in front (... x E and
        ... x L x P x D)."""
        if self.cached is None:
            distinct, indices = torch.unique(indices, return_inverse=True)
            features = self._encode(distinct.tolist())
        else:
            features = self.cached
        return ImageFeatures(features.embedding[indices], features.patches[indices])


@contextlib.contextmanager
def _distributed(device: str) -> Iterator[tuple[int, int, torch.device]]:
    """Rank, world size and device; under torchrun, inside a process group."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        yield 0, 1, resolve_device(device)
        return
    chosen = resolve_device(device)
    if chosen.type == "cuda":
        chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(chosen)
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    try:
        yield dist.get_rank(), dist.get_world_size(), chosen
    finally:
        if owned:
            dist.destroy_process_group()


def _start_model(preset, checkpoint, clip_weights, seed: int, device: torch.device) -> InCTRL:
    """The model training starts from; fresh heads are initialized from ``seed``."""
    if checkpoint is not None:
        if preset is not None:
            raise InputError(
                "give --preset or --checkpoint, not both: a checkpoint fixes the model"
            )
        return InCTRL.from_checkpoint(checkpoint, clip_weights, device=device)
    config = get_config(preset or DEFAULT_PRESET)
    if clip_weights is None and config.backbone_seed is None:
        raise InputError(
            f"preset {config.name} needs its CLIP weights (training heads on a random backbone is "
            "meaningless): give --clip-weights FILE, or a --checkpoint, or --preset tiny/demo"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if clip_weights is not None:
            return InCTRL.from_clip_weights(clip_weights, preset=config.name, device=device)
        return InCTRL(config).to_device(device)


def _check_run_dir(run_dir: Path, resume: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise InputError(f"{run_dir}: exists and is not a folder; choose another --out")
    if resume and not (run_dir / STATE_FILE).is_file():
        raise InputError(f"{run_dir}: holds no {STATE_FILE}, so there is no run to resume")
    if not resume and any((run_dir / f).exists() for f in (STATE_FILE, LAST_FILE, METRICS_FILE)):
        raise InputError(
            f"{run_dir}: already holds a training run; add --resume to continue it, or choose "
            "another --out"
        )


def _losses(sums: torch.Tensor, steps: int) -> dict[str, float]:
    score, image = (sums / steps).tolist()
    return {"loss": score + image, "loss_score": score, "loss_image": image}


class _Trainer:
    """One process's share of a run: the model, what trains, its sampler, features and priors,
    and the run's counters. Only rank 0 has a ``run_dir`` and a ``console``."""

    def __init__(
        self,
        data: TrainingSet,
        config: TrainConfig,
        start: dict,
        rank: int,
        world: int,
        device: torch.device,
        run_dir: Path | None,
        console: Console | None,
        cache_limit_bytes: int,
    ) -> None:
        self.config, self.rank, self.world, self.device = config, rank, world, device
        self.run_dir, self.console = run_dir, console
        self.epoch = self.step = 0
        self.window: list[torch.Tensor] = []  # loss terms since the last steps line
        self.model = _start_model(**start, seed=config.seed, device=device).eval()
        self.inctrl_head = self.model.inctrl_head  # all that trains: the backbone stays out of DDP
        trainable = [p for p in self.inctrl_head.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.sampler = BalancedSampler(
            data, config.batch_size // world, config.shots, config.seed + rank
        )
        checkpoint = start["checkpoint"]
        self.origin = {
            "model": self.model.config.name,
            "backbone": self.model.backbone_origin,
            "checkpoint": str(Path(checkpoint).resolve()) if checkpoint is not None else None,
        }
        self.store = FeatureStore(self.model, data.images, cache_limit_bytes, console)
        self.priors = torch.stack([self.model.text_prior(c).matrix() for c in data.categories])
        if world == 1:
            self.head = self.inctrl_head
        else:
            cuda = [device.index] if device.type == "cuda" else None
            self.head = DistributedDataParallel(self.inctrl_head, device_ids=cuda)
        self.head.train()
        if run_dir is not None:
            make_folder(run_dir)

    def resume(self, path: Path) -> None:
        self.epoch, self.step = load_train_state(
            path,
            self.inctrl_head,
            self.optimizer,
            self.sampler,
            self.rank,
            self.world,
            self.config,
            self.origin,
        )

    def _step(self) -> torch.Tensor:
        """One optimizer step on a fresh balanced batch; the two loss terms (float64, CPU)."""
        queries, prompts, targets = self.sampler.batch()
        queries = torch.tensor(queries, device=self.device)
        scores = self.head(
            self.store.features(queries[:, 0]),
            self.store.features(torch.tensor(prompts, device=self.device)),
            self.priors[queries[:, 1]],
        )
        labels = torch.tensor(targets, dtype=torch.float32, device=self.device)
        form = self.config.loss
        terms = torch.stack(
            [
                focal_loss(scores.score, labels, form),
                focal_loss(scores.image_residual_score, labels, form),
            ]
        )
        self.optimizer.zero_grad()
        terms.sum().backward()
        self.optimizer.step()
        return terms.detach().double().cpu()

    def run_epoch(self, show: Callable[..., None], log_every: int) -> dict[str, float]:
        """Train one epoch, write its files (rank 0), return its mean losses over processes.

        ``show(description=..., loss=...)`` follows each step; ``log_every`` > 0 adds a metrics
        line of the mean losses every that many steps.
        """
        self.epoch += 1
        started = time.perf_counter()
        sums = torch.zeros(2, dtype=torch.float64)
        for done in range(1, self.config.steps_per_epoch + 1):
            terms = self._step()
            self.step, sums = self.step + 1, sums + terms
            self.window.append(terms)
            show(
                description=f"epoch {self.epoch}/{self.config.epochs}",
                loss=f"loss {_losses(sums, done)['loss']:.4f}",
            )
            if log_every and self.step % log_every == 0:
                self._metrics("steps", _losses(sum(self.window), len(self.window)))
                self.window = []
        samplers = [self.sampler.state()]
        if self.world > 1:  # rank 0 saves every process's sampler and reports all their losses
            samplers = [None] * self.world
            dist.all_gather_object(samplers, self.sampler.state())
            total = sums.to(self.device)
            dist.all_reduce(total)
            sums = total.cpu() / self.world
        losses = _losses(sums, self.config.steps_per_epoch)
        if self.run_dir is not None:
            self._save(samplers)
            self._metrics("epoch", {**losses, "seconds": round(time.perf_counter() - started, 3)})
        return losses

    def _save(self, samplers: list) -> None:
        epoch_file = self.run_dir / f"epoch_{self.epoch:03d}.safetensors"
        # A seeded or file backbone is named, not copied, in every checkpoint.
        origin = self.model.backbone_origin
        self.model.save(epoch_file, include_backbone=not origin.startswith(("file:", "seed:")))
        with atomic_path(self.run_dir / LAST_FILE) as tmp:
            shutil.copyfile(epoch_file, tmp)
        save_train_state(
            self.run_dir / STATE_FILE,
            self.inctrl_head,
            self.optimizer,
            samplers,
            self.epoch,
            self.step,
            self.config,
            self.origin,
        )

    def _metrics(self, kind: str, values: dict) -> None:
        if self.run_dir is not None:
            record = {"kind": kind, "epoch": self.epoch, "step": self.step, **values}
            with open(self.run_dir / METRICS_FILE, "a") as handle:
                handle.write(json.dumps(record) + "\n")


def train(
    sources: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    preset: str | None = None,
    checkpoint: str | os.PathLike | None = None,
    clip_weights: str | os.PathLike | None = None,
    device: str = "cpu",
    resume: bool = False,
    *,
    console: Console | None = None,
    log_every: int = 0,
    cache_limit_bytes: int = CACHE_LIMIT_BYTES,
) -> dict:
    """Train the adapter and heads on the samples of ``sources`` (data set roots, category
    folders, the authors' JSON lists), write the run into ``out_dir`` and return a summary.

    The start model is ``checkpoint`` (its heads train on), else ``clip_weights`` with ``preset``
    (default ViT-B-16-plus-240), else a preset with a seeded backbone (tiny, demo). ``resume``
    continues the run in ``out_dir`` with the same settings and start model (``epochs`` may
    grow) and ends with the weights an uninterrupted run would have. ``console``: where progress
    goes (None: nowhere). ``log_every``: also a metrics line every N steps (rank 0's losses).
    """
    config = config or TrainConfig()
    if log_every < 0:
        raise InputError(f"log every {log_every} steps? give 0 (never) or more")
    run_dir = Path(out_dir)
    _check_run_dir(run_dir, resume)
    data = training_set(load_samples(sources), config.shots)
    began = time.perf_counter()
    start = {"preset": preset, "checkpoint": checkpoint, "clip_weights": clip_weights}
    with _distributed(device) as (rank, world, device):
        if config.batch_size // world < 2:
            raise InputError(
                f"batch size {config.batch_size} over {world} processes leaves fewer than 2 "
                "queries per process (BatchNorm needs 2); raise --batch-size"
            )
        main = rank == 0
        trainer = _Trainer(
            data,
            config,
            start,
            rank,
            world,
            device,
            run_dir if main else None,
            console if main else None,
            cache_limit_bytes,
        )
        if resume:
            trainer.resume(run_dir / STATE_FILE)
        resumed_from, losses = trainer.epoch, {}
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
        columns += (TimeElapsedColumn(), TextColumn("{task.fields[loss]}"))
        with Progress(*columns, console=trainer.console, disable=trainer.console is None) as bar:
            total = (config.epochs - trainer.epoch) * config.steps_per_epoch
            task = bar.add_task("training", total=total, loss="")
            while trainer.epoch < config.epochs:
                losses = trainer.run_epoch(
                    functools.partial(bar.update, task, advance=1), log_every
                )
    return {
        "run_dir": str(run_dir),
        "checkpoint": str(run_dir / LAST_FILE),
        "epochs": config.epochs,
        "resumed_from_epoch": resumed_from if resume else None,
        "steps": trainer.step,
        **losses,
        "world_size": world,
        "images": len(data.images),
        "categories": list(data.categories),
        "cached_features": trainer.store.cached is not None,
        "seconds": round(time.perf_counter() - began, 3),
    }
