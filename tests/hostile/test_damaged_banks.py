"""A damaged bank among several: ``inctrl-export triton`` refuses to copy it (one line naming the
file, nothing written), and a server of the bundle in place starts, answers every other
category and refuses the damaged one's requests alone, as it does while serving."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

import inctrl_export.cli
from inctrl_runtime.triton.client import TritonClient

from helpers import (
    BUNDLE_CATEGORIES,
    CATEGORY,
    random_images,
    register_served,
    require_serving,
    run_main,
    serve_bundle,
)

OTHER = BUNDLE_CATEGORIES[1]


@pytest.fixture
def damaged(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A bundle with both categories registered, ``OTHER``'s bank file cut short."""
    bundle = Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))
    register_served(bundle)
    bank = bundle / "references" / f"{OTHER}.npz"
    bank.write_bytes(bank.read_bytes()[:-100])
    return bundle


@pytest.mark.cli
def test_the_export_refuses_a_damaged_bank(damaged: Path, tmp_path: Path) -> None:
    outcome = run_main(inctrl_export.cli.main, "triton", damaged, "--out", tmp_path / "repo")
    outcome.assert_refused(f"{OTHER}.npz", "not a readable reference bank")
    assert not (tmp_path / "repo").exists()


@pytest.mark.parity
def test_a_damaged_bank_fails_alone_in_a_server(damaged: Path, tmp_path: Path) -> None:
    require_serving()
    image = random_images(1, seed=9)
    with serve_bundle(damaged, tmp_path / "repository") as served:
        client = TritonClient(served.http_url)
        (record,) = client.records(CATEGORY, image)  # candle: calibrated, so decided
        assert math.isfinite(record["score"]) and record["p_value"] is not None
        with pytest.raises(Exception, match="not a readable reference bank"):
            client.records(OTHER, image)
        assert client.records(CATEGORY, image)[0]["score"] == pytest.approx(record["score"])
