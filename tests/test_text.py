"""The text prompt ensembles (docs/model.md, "Text prior")."""

from __future__ import annotations

import pytest

from inctrl.text import prompt_ensemble

pytestmark = pytest.mark.unit


def test_ensemble_sizes_and_order() -> None:
    normal, anomaly = prompt_ensemble("candle")
    assert (len(normal), len(anomaly)) == (154, 88)
    assert len(set(normal)) == 154 and len(set(anomaly)) == 88
    # states outer, templates inner
    assert normal[0] == "a cropped photo of the candle."
    assert normal[21] == "a photo of the candle for anomaly detection."
    assert normal[22] == "a cropped photo of the flawless candle."
    assert normal[-1] == "a photo of the candle without damage for anomaly detection."
    assert anomaly[0] == "a cropped photo of the damaged candle."
    assert anomaly[-1] == "a photo of the candle with damage for anomaly detection."


def test_underscore_becomes_space() -> None:
    normal, anomaly = prompt_ensemble("metal_nut")
    assert normal[13] == "a photo of a metal nut."
    assert all("_" not in p for p in normal + anomaly)


@pytest.mark.parametrize("category", ["cat", "truck", "animal", "airplane"])
def test_single_prompt_categories(category: str) -> None:
    assert prompt_ensemble(category) == (
        [f"a photo of {category} for anomaly detection."],
        [f"a photo without {category} for anomaly detection."],
    )


def test_single_prompt_branch_sees_the_spaced_name() -> None:
    # "cat_food" is not in the list: it gets the full ensemble, with a space.
    normal, _ = prompt_ensemble("cat_food")
    assert len(normal) == 154 and "cat food" in normal[0]
