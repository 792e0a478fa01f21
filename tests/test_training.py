"""Training: the focal losses on hand-computed numbers, balanced sampling, a loss that falls,
checkpoints that load and score, a frozen backbone, exact reproducibility and resume, two-process
DistributedDataParallel, and one-line errors for data that cannot train.

Tiny preset (seeded backbone) on a small synthetic data set: 2 categories, each 6 normal images
(4 train/good, 2 test/good) and 5 anomalous ones.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from inctrl import InCTRL, InputError, get_config
from inctrl.checkpoint import is_head_key
from inctrl.data import ANOMALOUS, NORMAL, load_samples
from inctrl.synth import synthesize
from inctrl.training import TrainConfig, focal_loss, train
from inctrl.training.loop import FeatureStore
from inctrl.training.sampling import BalancedSampler, training_set
from inctrl_runtime.files import file_sha256

from helpers import perturb_heads

SHORT = TrainConfig(epochs=2, steps_per_epoch=4, batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("training") / "synth"
    synthesize(root, seed=0, categories=2, images_per_category=4, size=64)
    return root


def run(data: Path, out: Path, config: TrainConfig = SHORT, **options) -> dict:
    return train([data], out, config, **({"preset": "tiny"} | options))


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "last.safetensors")


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def epoch_losses(run_dir: Path) -> list[float]:
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [line["loss"] for line in lines if line["kind"] == "epoch"]


# ------------------------------------------------------------------------------- pure parts
@pytest.mark.unit
def test_focal_loss_forms_on_hand_computed_values() -> None:
    p = torch.tensor([0.8, 0.8, 1.0, 0.0, 0.5])
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    each = [focal_loss(p[i : i + 1], y[i : i + 1], "authors").item() for i in range(5)]
    # Probabilities taken as logits: bce = log(1 + e^-p) for y = 1, log(1 + e^p) for y = 0;
    # pt = exp(-bce) = sigmoid(+-p); loss = (1 - pt)^2 * bce.
    # 0.8, y=1: bce 0.371101, pt 0.689974 -> 0.310026^2 * 0.371101 = 0.035669
    # 0.8, y=0: bce 1.171101, pt 0.310026 -> 0.689974^2 * 1.171101 = 0.557520
    # 1.0, y=1 (a perfect score still costs): bce 0.313262, pt 0.731059 -> 0.022658
    # 0.0, y=0: bce ln 2, pt 0.5 -> 0.25 * 0.693147 = 0.173287
    # 0.5, y=0: bce 0.974077, pt 0.377541 -> 0.622459^2 * 0.974077 = 0.377412
    assert each == pytest.approx([0.035669, 0.557520, 0.022658, 0.173287, 0.377412], abs=1e-6)
    proper = [focal_loss(p[i : i + 1], y[i : i + 1], "focal").item() for i in (0, 1, 4)]
    # bce = -ln p (y = 1) or -ln(1 - p) (y = 0); pt = p or 1 - p.
    # 0.8, y=1: 0.2^2 * 0.223144 = 0.008926; 0.8, y=0: 0.8^2 * 1.609438 = 1.030040;
    # 0.5, y=0: 0.5^2 * ln 2 = 0.173287
    assert proper == pytest.approx([0.008926, 1.030040, 0.173287], abs=1e-6)
    assert focal_loss(p[:2], y[:2], "authors").item() == pytest.approx(
        (0.035669 + 0.557520) / 2, abs=1e-6
    )
    assert focal_loss(p[:2], y[:2], "focal", alpha=0.5).item() == pytest.approx(
        0.5 * (0.008926 + 1.030040) / 2, abs=1e-6
    )


@pytest.mark.unit
def test_proper_focal_loss_stays_finite_when_saturated() -> None:
    p = torch.tensor([1.0, 0.0], requires_grad=True)
    loss = focal_loss(p, torch.tensor([0.0, 1.0]), "focal")
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 10  # confidently wrong: large, not inf
    assert torch.isfinite(p.grad).all()


@pytest.mark.unit
def test_pools_hold_all_normal_images_and_batches_are_balanced(data: Path) -> None:
    samples = load_samples([data, data])  # named twice: repeats count once
    train_set = training_set(samples, shots=2)
    assert len(train_set.images) == 22
    assert [len(pool) for pool in train_set.pools] == [6, 6]  # train/good + test/good
    assert len(train_set.queries[NORMAL]) == 12 and len(train_set.queries[ANOMALOUS]) == 10
    sampler = BalancedSampler(train_set, batch_size=5, shots=3, seed=0)
    seen = {NORMAL: [], ANOMALOUS: []}
    for _ in range(10):  # 20 normal draws, 30 anomalous: whole passes over each class
        queries, prompts, targets = sampler.batch()
        assert targets == [NORMAL] * 2 + [ANOMALOUS] * 3
        for (image, category), shots, target in zip(queries, prompts, targets, strict=True):
            seen[target].append((image, category))
            assert len(set(shots)) == 3 and set(shots) <= set(train_set.pools[category])
    assert sorted(seen[NORMAL][:12]) == sorted(train_set.queries[NORMAL])
    assert sorted(seen[ANOMALOUS][:10]) == sorted(train_set.queries[ANOMALOUS])


@pytest.mark.unit
def test_data_that_cannot_train_is_refused(data: Path, tmp_path: Path) -> None:
    samples = load_samples([data])
    with pytest.raises(InputError, match="no anomalous images"):
        training_set([s for s in samples if s.target == NORMAL], shots=2)
    with pytest.raises(InputError, match="preset ViT-B-16-plus-240 needs its CLIP weights"):
        train([data], tmp_path / "full", SHORT)
    assert not (tmp_path / "full").exists()
    checkpoint = tmp_path / "tiny.safetensors"
    InCTRL(get_config("tiny")).save(checkpoint)
    with pytest.raises(InputError, match="not both"):
        train([data], tmp_path / "both", SHORT, preset="tiny", checkpoint=checkpoint)


# ----------------------------------------------------------------------------------- runs
@pytest.mark.cli
def test_training_lowers_the_loss_and_checkpoints_every_epoch(data: Path, tmp_path: Path) -> None:
    config = TrainConfig(epochs=3, steps_per_epoch=20, batch_size=8)
    summary = run(data, tmp_path / "run", config, log_every=10)
    losses = epoch_losses(tmp_path / "run")
    assert len(losses) == 3 and losses[2] < losses[0] - 0.02, losses
    assert summary["steps"] == 60 and summary["loss"] == pytest.approx(losses[2])
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert sum(json.loads(line)["kind"] == "steps" for line in lines) == 6
    for epoch in (1, 2, 3):
        assert (tmp_path / "run" / f"epoch_{epoch:03d}.safetensors").is_file()
    last = tmp_path / "run" / "last.safetensors"
    assert last.read_bytes() == (tmp_path / "run" / "epoch_003.safetensors").read_bytes()
    with safe_open(str(last), framework="pt") as handle:  # heads only: the backbone is a seed
        assert handle.metadata()["backbone"] == "seed:0"
        assert all(is_head_key(key) for key in handle.keys())  # noqa: SIM118
    model = InCTRL.from_checkpoint(last)
    good = sorted((data / "synth_fabric" / "train" / "good").glob("*.png"))
    queries = [good[-1], *sorted((data / "synth_fabric" / "test").glob("[!g]*/*.png"))]
    scores = model.score(queries, model.reference(good[:2]), model.text_prior("synth_fabric"))
    assert scores.score.shape == (6,) and bool(((scores.score >= 0) & (scores.score <= 1)).all())


@pytest.mark.cli
def test_only_the_heads_train(data: Path, tmp_path: Path) -> None:
    start = perturb_heads(InCTRL(get_config("tiny")))
    with torch.no_grad():  # a backbone that is not the seeded one, saved in the checkpoint
        start.clip.visual.proj.mul_(1.5)
    start.save(tmp_path / "start.safetensors", include_backbone=True)
    before = start.state_dict()
    train([data], tmp_path / "run", SHORT, checkpoint=tmp_path / "start.safetensors")
    after = weights(tmp_path / "run")
    backbone = [k for k in before if not is_head_key(k)]
    assert backbone and all(torch.equal(after[k], before[k]) for k in backbone)
    heads = [k for k in before if is_head_key(k) and ".bn1." not in k]
    assert all(not torch.equal(after[k], before[k]) for k in heads if k.endswith("weight"))


@pytest.mark.cli
def test_start_from_clip_weights_names_the_file_in_checkpoints(data: Path, tmp_path: Path) -> None:
    clip = tmp_path / "clip.safetensors"
    save_file(InCTRL(get_config("tiny")).clip.state_dict(), str(clip))
    one_epoch = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4)
    run(data, tmp_path / "run", one_epoch, clip_weights=clip)
    last = tmp_path / "run" / "last.safetensors"
    with safe_open(str(last), framework="pt") as handle:
        assert handle.metadata()["backbone"] == f"file:{file_sha256(clip)}"
        assert all(is_head_key(key) for key in handle.keys())  # noqa: SIM118
    with pytest.raises(InputError, match="--clip-weights"):
        InCTRL.from_checkpoint(last)
    assert InCTRL.from_checkpoint(last, clip_weights=clip).backbone_origin.startswith("file:")


@pytest.mark.cli
def test_same_seed_same_weights_and_resume_continues_exactly(data: Path, tmp_path: Path) -> None:
    run(data, tmp_path / "a", SHORT)
    run(data, tmp_path / "again", SHORT)
    assert same(weights(tmp_path / "a"), weights(tmp_path / "again"))
    other_seed = TrainConfig(epochs=2, steps_per_epoch=4, batch_size=4, seed=1)
    run(data, tmp_path / "seed1", other_seed)
    assert not same(weights(tmp_path / "a"), weights(tmp_path / "seed1"))

    first_epoch = TrainConfig(epochs=1, steps_per_epoch=4, batch_size=4)
    run(data, tmp_path / "b", first_epoch)
    with pytest.raises(InputError, match="already holds a training run"):
        run(data, tmp_path / "b", SHORT)
    with pytest.raises(InputError, match="seed 0 -> 1"):
        run(data, tmp_path / "b", other_seed, resume=True)
    summary = run(data, tmp_path / "b", SHORT, resume=True)
    assert summary["resumed_from_epoch"] == 1 and summary["steps"] == 8
    assert same(weights(tmp_path / "a"), weights(tmp_path / "b"))
    assert epoch_losses(tmp_path / "b") == epoch_losses(tmp_path / "a")
    state = load_file(tmp_path / "b" / "train_state.safetensors")
    assert {"rng.python.0", "rng.numpy", "rng.torch"} <= state.keys()
    assert all(state[k].dtype == torch.uint8 for k in ("rng.python.0", "rng.numpy", "rng.torch"))
    with pytest.raises(InputError, match="no run to resume"):
        run(data, tmp_path / "c", SHORT, resume=True)


@pytest.mark.parity
def test_features_are_cached_or_encoded_per_step(data: Path, tmp_path: Path) -> None:
    model = InCTRL(get_config("tiny"))
    images = training_set(load_samples([data]), shots=2).images
    cached = FeatureStore(model, images, limit_bytes=1 << 40, console=None)
    per_step = FeatureStore(model, images, limit_bytes=0, console=None)
    assert cached.cached is not None and per_step.cached is None
    index = torch.tensor([[7, 3], [3, 21]])
    a, b = cached.features(index), per_step.features(index)
    assert a.patches.shape == (2, 2, 3, 225, 64)
    torch.testing.assert_close(a.embedding, b.embedding, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.patches, b.patches, rtol=0, atol=1e-5)
    one_epoch = TrainConfig(epochs=1, steps_per_epoch=2, batch_size=4)
    summary = run(data, tmp_path / "run", one_epoch, cache_limit_bytes=0)
    assert summary["cached_features"] is False and len(epoch_losses(tmp_path / "run")) == 1


# ------------------------------------------------------------------------ command line, DDP
def inctrl(*args: str, cwd: Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    command = [sys.executable, "-m", *launcher, *(("-m",) if launcher else ()), "inctrl", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_two_processes_on_cpu(data: Path, tmp_path: Path) -> None:
    launcher = ("torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1")
    launcher += ("--master_port", str(free_port()))
    options = ("--preset", "tiny", "--epochs", "2", "--steps-per-epoch", "3", "--batch-size", "4")
    result = inctrl(
        "train",
        "--data",
        str(data),
        "--out",
        "run",
        *options,
        "--json",
        cwd=tmp_path,
        launcher=launcher,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1 and printed[0]["world_size"] == 2  # rank 0 alone prints
    assert len(epoch_losses(tmp_path / "run")) == 2  # and writes
    state = load_file(tmp_path / "run" / "train_state.safetensors")
    assert {"rng.python.0", "rng.python.1"} <= state.keys()
    model = InCTRL.from_checkpoint(tmp_path / "run" / "last.safetensors")
    good = sorted((data / "synth_washer" / "train" / "good").glob("*.png"))
    scores = model.score(good[2:], model.reference(good[:2]), model.text_prior("synth_washer"))
    assert bool(torch.isfinite(scores.score).all())


def copy_without_normal_images(data: Path, folder: Path) -> Path:
    shutil.copytree(data, folder)
    for split in ("train", "test"):
        shutil.rmtree(folder / "synth_washer" / split / "good")
    return folder


@pytest.mark.cli
@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("empty", "no MVTec-layout category"),
        ("no_normal", "category 'synth_washer' has no normal images"),
        ("too_many_shots", "7 shots asked for, but category 'synth_fabric' has only 6"),
    ],
)
def test_cli_refuses_data_that_cannot_train(data: Path, tmp_path: Path, case, message) -> None:
    source, shots = data, "2"
    if case == "empty":
        source = tmp_path / "empty"
        source.mkdir()
    elif case == "no_normal":
        source = copy_without_normal_images(data, tmp_path / "data")
    else:
        shots = "7"
    result = inctrl(
        "train",
        "--data",
        str(source),
        "--out",
        "run",
        "--preset",
        "tiny",
        "-k",
        shots,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not (tmp_path / "run").exists()
