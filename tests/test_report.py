"""The inspection report (``inctrl_runtime.report``): the gallery's cap, the charts' geometry, an
atomic, self-contained page, and ``inctrl-run score --report`` on a calibrated, labelled run
(the page in a real browser: ``test_report_browser.py``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inctrl_runtime.errors import InputError
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.report import Card, Header, ReportWriter, gallery_rows, jpeg, mvtec_label
from inctrl_runtime.report_charts import histogram, roc_curve

from helpers import CATEGORY, calibrated, inctrl_run, random_images

pytestmark = pytest.mark.unit


def test_small_runs_show_every_part_most_anomalous_first() -> None:
    rows, note = gallery_rows([0.1, 0.5, 0.3, 0.5], [False, True, None, False], cap=4)
    assert rows == [1, 3, 2, 0] and note is None  # ties keep run order


def test_a_large_run_shows_every_flagged_part_the_top_and_a_seeded_sample() -> None:
    rng = np.random.default_rng(0)
    scores = rng.random(2000).tolist()
    flagged = [score > 0.97 for score in scores]
    rows, note = gallery_rows(scores, flagged, cap=500)
    assert len(rows) == 500
    assert {i for i, f in enumerate(flagged) if f} <= set(rows)  # every flagged part
    others = sorted((i for i, f in enumerate(flagged) if not f), key=lambda i: -scores[i])
    room = 500 - sum(flagged)
    assert set(others[: room // 2]) <= set(rows)  # the highest-scoring others
    assert [scores[i] for i in rows] == sorted((scores[i] for i in rows), reverse=True)
    assert gallery_rows(scores, flagged, cap=500) == (rows, note)  # seeded
    assert f"Showing 500 of 2000 parts: all {sum(flagged)} flagged" in note
    # more flagged parts than the cap: all of them still show
    rows, note = gallery_rows(scores, [True] * 2000, cap=500)
    assert len(rows) == 2000 and "all 2000 flagged" in note


def test_the_threshold_line_sits_where_the_threshold_is_on_the_score_axis() -> None:
    svg = histogram(np.array([0.1, 0.2, 0.3]), np.array([0.25, 0.9]), threshold=0.4)
    attrs = dict(re.findall(r'(data-[a-z-]+)="([^"]+)"', svg.split(">")[0]))
    low, high = float(attrs["data-low"]), float(attrs["data-high"])
    left, width = float(attrs["data-left"]), float(attrs["data-width"])
    x = float(re.search(r'class="threshold-line" x1="([0-9.]+)"', svg).group(1))
    assert (low, high) == (0.1, 0.9)
    assert x == pytest.approx(left + (0.4 - low) / (high - low) * width, abs=1e-3)
    assert "threshold-line" not in histogram(np.array([]), np.array([0.5]), None)


def test_the_roc_curve_by_hand() -> None:
    fpr, tpr = roc_curve(np.array([0.1, 0.4]), np.array([0.4, 0.8]))
    # 0.8 (a defect) first, then 0.4 for both kinds at once, then 0.1
    assert fpr.tolist() == [0, 0, 0.5, 1] and tpr.tolist() == [0, 0.5, 1, 1]


def test_mvtec_labels_come_from_the_defect_folder() -> None:
    assert mvtec_label("data/pcb/test/scratch/000.png") == "scratch"
    assert mvtec_label("data/pcb/test/good/000.png") == "good"
    assert mvtec_label("frames/000.png") is None


def _header(**extra) -> Header:
    return Header("a report", (("bundle", "b"),), **extra)


def test_a_report_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "out" / "report.html"
    picture = jpeg(Image.fromarray(random_images(1, seed=5)[0]))
    with pytest.raises(RuntimeError), ReportWriter(target, _header()) as writer:
        writer.add([Card("a.png", 0.5, picture=picture)])
        raise RuntimeError("the run failed")
    assert not target.exists() and list(target.parent.iterdir()) == []  # no spool left
    target.write_text("the report of an earlier run")
    with pytest.raises(KeyboardInterrupt), ReportWriter(target, _header()) as writer:
        writer.add([Card("a.png", 0.5, picture=picture)])
        raise KeyboardInterrupt
    assert target.read_text() == "the report of an earlier run"  # kept whole
    assert list(target.parent.iterdir()) == [target]
    with ReportWriter(target, _header(), cap=1) as writer:
        writer.add([Card(f"{i}.png", i / 10, 0.5, i == 2, 0, picture) for i in range(3)])
        # the writer keeps a few numbers of each part, never its picture or card
        (section,) = writer._sections
        kept = [section.scores, section.flagged, section.labels, section.spans]
        assert all(not isinstance(v, (bytes, str, Card)) or v is None
                   for values in kept[:2] for v in values)  # fmt: skip
        assert all(isinstance(span, tuple) and len(span) == 2 for span in section.spans)
        writer.finish("no alarm")
    page = target.read_text()
    assert list(target.parent.iterdir()) == [target]
    assert page.count('class="card"') == 1  # the flagged part, the cap's first claim
    assert '<div class="name">2.png</div>' in page and '<div class="name">1.png</div>' not in page
    assert "Showing 1 of 3 parts: all 1 flagged" in page and "no alarm" in page
    assert "http://" not in page and "https://" not in page


@pytest.mark.parametrize(("name", "phrase"), [("report.txt", "name an .html file"),
                                              (".", "is a folder")])  # fmt: skip
def test_a_report_path_is_checked_before_any_work(tmp_path: Path, name: str, phrase: str) -> None:
    with pytest.raises(InputError, match=phrase):
        ReportWriter(tmp_path / name, _header())


@pytest.mark.cli
def test_score_writes_a_report_of_a_labelled_calibrated_run(
    bundle: Path, inputs: dict, tmp_path: Path
) -> None:
    calibrated(bundle, inputs)
    bank = NumpyBank.load(bundle / "references" / f"{CATEGORY}.npz")
    assert bank.thumbnails is not None and bank.thumbnails.shape == (2, 96, 96, 3)
    test = tmp_path / "candle" / "test"
    for kind, seed in (("good", 30), ("crack", 31)):
        (test / kind).mkdir(parents=True)
        for i, image in enumerate(random_images(3, seed=seed)):
            Image.fromarray(image).save(test / kind / f"{i:03d}.png")
    report = tmp_path / "report.html"
    outcome = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.1, "--json",
                         "--report", report, test / "good", test / "crack")  # fmt: skip
    assert outcome.code == 0, outcome.err
    assert f"report: {report}" in outcome.err
    records = json.loads(outcome.out)
    page = report.read_text()
    assert page.count('class="card"') == len(records) == 6
    assert page.count("data:image/png;base64,") == 2  # the prompts' thumbnails
    assert page.count("data:image/jpeg;base64,") == 6  # a heatmap a card
    flagged = sum(r["anomalous"] for r in records)
    assert page.count('data-flagged="true"') == flagged
    assert f'class="summary-flagged">flagged<b>{flagged}</b>' in page
    assert "Against the labels" in page and 'class="grid confusion"' in page and "crack" in page
    assert f"{records[0]['threshold']:.4f}" in page and "target false-positive rate" in page
    assert "DEMO" not in page  # the tiny checkpoint is not the demo
    # with the drift monitor: its state after the last part
    watched = inctrl_run("score", bundle, "--category", CATEGORY, "--fpr", 0.1, "--monitor",
                         "--jsonl", "--report", report, test / "good")  # fmt: skip
    assert watched.code == 0, watched.err
    last = json.loads(watched.out.splitlines()[-1])["drift"]
    assert f"evidence {last['evidence']:.3g} after 3 parts" in report.read_text()


def test_a_result_made_again_from_its_record_draws_the_same_heatmap(
    bundle: Path, inputs: dict
) -> None:
    from inctrl_runtime.detector import Detector
    from inctrl_runtime.results import Result

    detector = Detector.open(calibrated(bundle, inputs))
    for result in detector.results(CATEGORY, inputs["queries"][:3], fpr=0.1):
        again = Result.of_record(result.record(), 240, result.picture)
        assert again.record() == {**result.record(), "drift": None}
        assert np.array_equal(np.asarray(again.heatmap()), np.asarray(result.heatmap()))
