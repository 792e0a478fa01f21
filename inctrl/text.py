"""The text prompt ensembles behind the text prior (docs/model.md, "Text prior")."""

from __future__ import annotations

# Categories for which the authors use a single prompt pair instead of the ensemble.
SINGLE_PROMPT_CATEGORIES = frozenset(
    {
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
        "animal",
    }
)

NORMAL_STATES = (
    "{}",
    "flawless {}",
    "perfect {}",
    "unblemished {}",
    "{} without flaw",
    "{} without defect",
    "{} without damage",
)
ANOMALY_STATES = ("damaged {}", "{} with flaw", "{} with defect", "{} with damage")

TEMPLATES = (
    "a cropped photo of the {}.",
    "a cropped photo of a {}.",
    "a close-up photo of a {}.",
    "a close-up photo of the {}.",
    "a bright photo of a {}.",
    "a bright photo of the {}.",
    "a dark photo of a {}.",
    "a dark photo of the {}.",
    "a jpeg corrupted photo of a {}.",
    "a jpeg corrupted photo of the {}.",
    "a blurry photo of the {}.",
    "a blurry photo of a {}.",
    "a photo of the {}.",
    "a photo of a {}.",
    "a photo of a small {}.",
    "a photo of the small {}.",
    "a photo of a large {}.",
    "a photo of the large {}.",
    "a photo of a {} for visual inspection.",
    "a photo of the {} for visual inspection.",
    "a photo of a {} for anomaly detection.",
    "a photo of the {} for anomaly detection.",
)


def category_phrase(category: str) -> str:
    """The words used in prompts for a category name: ``metal_nut`` -> ``metal nut``."""
    return category.replace("_", " ")


def prompt_ensemble(category: str) -> tuple[list[str], list[str]]:
    """Normal and anomaly prompts for a category: 154 and 88, or 1 and 1 for CIFAR-like names."""
    phrase = category_phrase(category)
    if phrase in SINGLE_PROMPT_CATEGORIES:
        return (
            [f"a photo of {phrase} for anomaly detection."],
            [f"a photo without {phrase} for anomaly detection."],
        )

    def fill(states: tuple[str, ...]) -> list[str]:
        return [t.format(s.format(phrase)) for s in states for t in TEMPLATES]

    return fill(NORMAL_STATES), fill(ANOMALY_STATES)
