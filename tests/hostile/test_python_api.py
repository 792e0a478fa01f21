"""Hostile input met through the Python API: a bank re-registered within the file system's
mtime granularity, what a bank records, banks given to score, a batch size of 0, and a manifest
whose files and graphs must agree. The table of command-line cases is in ``test_cases.py``."""

from __future__ import annotations

import os
from dataclasses import replace

import numpy as np
import pytest

from inctrl_runtime.bundle import Bundle
from inctrl_runtime.detector import Detector
from inctrl_runtime.errors import InputError
from inctrl_runtime.references import NumpyBank

from helpers import Work


@pytest.mark.unit
def test_same_size_reregistration_within_the_mtime_granularity_is_seen(work: Work) -> None:
    """Defect 10: the bank cache is keyed on the digest the file records, not (mtime, size)."""
    reader, writer = Detector.open(work.bundle), Detector.open(work.bundle)
    first = reader.registered("candle")
    stamp = work.bank.stat()
    writer.register("candle", list(reversed(work.shots)))  # same k, same sizes, new content
    os.utime(work.bank, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))  # the same mtime
    assert work.bank.stat().st_size == stamp.st_size
    again = reader.registered("candle")
    assert again.digests == tuple(reversed(first.digests))
    assert reader.registered("candle") is again  # unchanged: read once


@pytest.mark.unit
def test_a_bank_records_its_format_category_and_digest(work: Work) -> None:
    bank = NumpyBank.load(work.bank)
    assert bank.category == "candle"
    with np.load(work.bank) as data:
        assert int(data["format_version"]) == 2 and str(data["digest"]) == bank.digest
    with pytest.raises(ValueError, match="category"):
        replace(bank, category=None).save(work.folder / "x.npz")


@pytest.mark.unit
def test_banks_given_to_score_are_checked_too(work: Work) -> None:
    detector = Detector.open(work.bundle)
    bank = detector.registered("candle")
    narrow = replace(bank, patches=bank.patches[..., :-1])
    with pytest.raises(InputError, match="does not fit"):
        detector.score_arrays("candle", detector.pixels(work.queries), bank=narrow)
    other = replace(bank, encoder_sha256="f" * 64)
    with pytest.raises(InputError, match="another encoder"):
        detector.results("candle", work.queries, bank=other)


@pytest.mark.unit
def test_reference_batch_size_zero_is_one_line(work: Work) -> None:
    with pytest.raises(InputError, match="batch size"):
        Detector.open(work.bundle).reference(work.shots, batch_size=0)


@pytest.mark.unit
def test_manifest_files_and_graphs_must_agree(work: Work) -> None:
    """Every file the manifest names is inside, listed and hashed: the bundle as exported opens,
    and each graph's file is among the hashed ones."""
    bundle = Bundle.open(work.bundle)
    for graph in bundle.graphs.values():
        assert graph.file.name in bundle.files
        assert graph.file.resolve().parent == work.bundle.resolve()
