"""Data sets: MVTec-layout folders, the authors' JSON lists, and the round trip between them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from inctrl.data import (
    ANOMALOUS,
    NORMAL,
    by_category,
    index_to_json,
    load_samples,
    normal_pool,
    read_json_list,
    scan_category,
)
from inctrl.synth import split_counts
from inctrl_runtime.errors import InputError

from helpers import run_inctrl, synth_data


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synth_data(tmp_path_factory, seed=3, categories=2, images_per_category=4, size=48)


@pytest.mark.unit
def test_scan_category_finds_every_split_label_and_mask(dataset) -> None:
    counts = split_counts(4)
    samples = scan_category(dataset / "synth_fabric")
    train = [s for s in samples if s.split == "train"]
    test_good = [s for s in samples if s.split == "test" and s.target == NORMAL]
    anomalous = [s for s in samples if s.target == ANOMALOUS]
    assert len(train) == counts["train"]["good"] and all(s.target == NORMAL for s in train)
    assert len(test_good) == counts["test"]["good"]
    assert len(anomalous) == sum(n for label, n in counts["test"].items() if label != "good")
    assert all(s.mask_path and Path(s.mask_path).is_file() for s in anomalous)
    assert all(Path(s.mask_path).name == Path(s.image_path).stem + "_mask.png" for s in anomalous)
    assert {s.category for s in samples} == {"synth_fabric"}


@pytest.mark.unit
def test_root_and_category_folder_and_grouping(dataset) -> None:
    everything = load_samples([dataset])
    groups = by_category(everything)
    assert list(groups) == ["synth_fabric", "synth_washer"]
    assert load_samples([dataset / "synth_washer"]) == groups["synth_washer"]
    pool = normal_pool(everything, "synth_washer")
    assert pool and all(s.split == "train" and s.target == NORMAL for s in pool)


@pytest.mark.unit
def test_index_to_json_round_trip(dataset, tmp_path) -> None:
    written = index_to_json(dataset, tmp_path / "json")
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{c}_{kind}.json"
        for c in ("synth_fabric", "synth_washer")
        for kind in ("val_normal", "val_outlier", "normal", "outlier")
    )
    folder = [s for s in scan_category(dataset / "synth_fabric") if s.split == "test"]
    from_json = read_json_list(tmp_path / "json" / "synth_fabric_val_normal.json") + read_json_list(
        tmp_path / "json" / "synth_fabric_val_outlier.json"
    )
    # The authors' lists carry no masks; everything else comes back.
    strip = [(str(Path(s.image_path).resolve()), s.target, s.category, s.defect) for s in folder]
    back = [(s.image_path, s.target, s.category, s.defect) for s in from_json]
    assert back == strip
    training = read_json_list(tmp_path / "json" / "synth_fabric_normal.json")
    assert {s.split for s in training} == {"train", "test"}
    assert all(s.target == NORMAL for s in training)


@pytest.mark.unit
def test_authors_relative_paths_resolve_from_the_json_folder(dataset, tmp_path) -> None:
    image = next((dataset / "synth_fabric" / "train" / "good").iterdir())
    listing = tmp_path / "list.json"
    (tmp_path / "img.png").write_bytes(image.read_bytes())
    listing.write_text(json.dumps([{"image_path": "img.png", "target": 0, "type": "x"}]))
    (sample,) = read_json_list(listing)
    assert Path(sample.image_path) == tmp_path / "img.png"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "not a readable JSON list"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"image_path": "a.png"}]', "entry 0 lacks"),
        ('[{"image_path": "a.png", "target": 2, "type": "x"}]', "target 2"),
    ],
)
def test_bad_json_lists(tmp_path, content, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_json_list(path)


@pytest.mark.unit
def test_bad_folders(tmp_path) -> None:
    with pytest.raises(InputError, match="no such data folder"):
        load_samples([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no MVTec-layout category"):
        load_samples([tmp_path / "empty"])
    with pytest.raises(InputError, match="no such JSON file"):
        load_samples([tmp_path / "missing.json"])


@pytest.mark.cli
def test_data_index_command(dataset, tmp_path) -> None:
    result = run_inctrl("data", "index", str(dataset), "--out", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 8
    assert len(list((tmp_path / "json").iterdir())) == 8
    missing = run_inctrl("data", "index", "nowhere", "--out", "json", cwd=tmp_path)
    assert missing.returncode == 2 and missing.stderr.startswith("error: nowhere: no such data")
