"""Seconds per query of the PyTorch model: cached few-shot state vs the authors' cost model.

    python -m inctrl_bench.core_latency --preset ViT-B-16-plus-240 --shots 2 --queries 5

(a) ``cached``: the prompt bank and text prior are computed once, then each query costs one
    encoder pass plus the head;
(b) ``authors``: what the authors' script does for every query, built from our modules: encode
    the k prompt images and the category's text prompts again, then score.
Both run in one process on the same seeded random images, after one warm-up query each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from inctrl import InCTRL, get_config
from inctrl.residual import Scores
from inctrl.text import prompt_ensemble
from inctrl_bench.torch_side import authors_text_prior
from inctrl_runtime.files import write_json


def authors_way(
    model: InCTRL, query: np.ndarray, prompts: list[np.ndarray], category: str
) -> Scores:
    """One query scored the authors' way: nothing is reused between queries."""
    bank = model.reference(prompts)
    prior = authors_text_prior(model, category)
    return model.score([query], bank, prior, batch_size=1)


def _timed(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _summary(times: list[float]) -> dict:
    return {
        "median_s": statistics.median(times),
        "mean_s": statistics.fmean(times),
        "min_s": min(times),
        "runs": len(times),
    }


def measure(preset: str, shots: int, queries: int, category: str, seed: int = 0) -> dict:
    """Time both ways on ``queries`` random images (after one warm-up query each)."""
    torch.manual_seed(seed)
    model = InCTRL(get_config(preset))
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (256, 320, 3), dtype=np.uint8) for _ in range(shots + queries)]
    prompts, query_images = images[:shots], images[shots:]
    it = iter(query_images * 2)

    with torch.inference_mode():
        setup_start = time.perf_counter()
        bank = model.reference(prompts)
        bank_s = time.perf_counter() - setup_start
        prior_start = time.perf_counter()
        prior = model.text_prior(category)
        prior_s = time.perf_counter() - prior_start
        authors_prior_start = time.perf_counter()
        authors_text_prior(model, category)
        authors_prior_s = time.perf_counter() - authors_prior_start

        model.score(query_images[:1], bank, prior, batch_size=1)  # warm-up
        cached = _timed(lambda: model.score([next(it)], bank, prior, batch_size=1), queries)
        authors_way(model, query_images[0], prompts, category)  # warm-up
        authors = _timed(lambda: authors_way(model, next(it), prompts, category), queries)

    normal, anomaly = prompt_ensemble(category)
    return {
        "preset": preset,
        "shots": shots,
        "category": category,
        "text_prompts": len(normal) + len(anomaly),
        "batch": 1,
        "weights": "random (seeded)",
        "reference_bank_s": bank_s,
        "text_prior_s": prior_s,
        "text_prior_authors_way_s": authors_prior_s,
        "cached": _summary(cached),
        "authors": _summary(authors),
        "speedup_cached_vs_authors": statistics.median(authors) / statistics.median(cached),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "device": "cpu",
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="ViT-B-16-plus-240")
    parser.add_argument("--shots", type=int, default=2)
    parser.add_argument("--queries", type=int, default=5, help="timed queries per way")
    parser.add_argument("--category", default="candle")
    parser.add_argument("--json", dest="json_path", help="also write the results here")
    args = parser.parse_args(argv)
    result = measure(args.preset, args.shots, args.queries, args.category)
    print(json.dumps(result, indent=2))
    if args.json_path:
        write_json(args.json_path, result)


if __name__ == "__main__":
    main()
