"""``--report FILE.html`` of ``inctrl-run score`` and ``inctrl-run client``: the header a run's
report starts with, and the cards of each batch as the batch finishes (``inctrl_runtime.report``
writes the page)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from inctrl_runtime.decisions import threshold
from inctrl_runtime.detector import Detector
from inctrl_runtime.drift import Drift
from inctrl_runtime.preprocess import capped, load_image
from inctrl_runtime.references import NumpyBank
from inctrl_runtime.regions import region_rule
from inctrl_runtime.report import Header, ReportWriter, card_of, mvtec_label, png, run_fields
from inctrl_runtime.results import Result


def score_header(
    detector: Detector, category: str, bank: NumpyBank | None, fpr: float,
    region_fpr: float | None,
) -> Header:  # fmt: skip
    """The header of a scored run: the bundle, its model (the demo said so), precision and
    backend, the category, its prompts (thumbnails where the bank keeps them), its calibration,
    the rate and the thresholds, then the machine, date and command. ``bank`` is the run's own
    (``--shot``; None: the registered one)."""
    bundle = detector.bundle
    used = bank if bank is not None else detector.registered(category)
    model = f"{bundle.model.preset}: {bundle.model.backbone}"
    if bundle.is_demo:
        model += " (the embedded DEMO model: synthetic data only, not for real inspection)"
    fields = [("bundle", str(bundle.path)), ("model", model),
              ("precision, backend", f"{detector.precision}, {detector.backend}"),
              ("category", category), ("prompts (k)", str(used.shots))]  # fmt: skip
    if used.tiling is not None:
        width, height = used.frame_size
        grid = f"{used.tiling} over {width} x {height} frames: {used.tiling.describe()}"
        fields.append(("tiles", grid))
    calibration = None if bank is not None else used.calibration
    cut = None
    if calibration is None:
        fields.append(("calibration", "none: no p-values or decisions (inctrl-run calibrate)"))
    else:
        cut = threshold(calibration.scores, fpr)
        made = f"{calibration.backend} {calibration.precision}"
        fields.append(("calibration", f"n = {calibration.n} normal images ({made})"))
        fields.append(("target false-positive rate", f"{fpr:g}"))
        fields.append(("threshold", "none: too few calibration images for this rate"
                       if cut is None else f"{cut:.4f}"))  # fmt: skip
        rule = region_rule(calibration, fpr if region_fpr is None else region_fpr)
        if rule is not None:
            fields.append(("region threshold", f"{rule.threshold:.4f}"))
    thumbnails = used.thumbnails
    prompts = tuple(
        (source, None if thumbnails is None else png(thumbnails[i]))
        for i, source in enumerate(used.sources)
    )
    return Header(
        f"inctrl inspection report: {category}",
        (*fields, *run_fields()),
        prompts,
        calibration=None if calibration is None else calibration.scores,
        threshold=cut,
        target_fpr=None if calibration is None else fpr,
    )


def reporting(batches: Iterator[list[Result]], writer: ReportWriter) -> Iterator[list[Result]]:
    """The batches as they come, each batch's cards added to the report first; once the last
    has passed, the report is written (with the drift monitor's state after the last part)."""
    drift = None
    with writer:
        for batch in batches:
            writer.add(card_of(result, mvtec_label(result.image)) for result in batch)
            drift = batch[-1].drift if batch else drift
            yield batch
        writer.finish(None if drift is None else _drift_line(drift))


def _drift_line(drift: Drift) -> str:
    state = "ALARM" if drift.alarm else "no alarm"
    return f"{state}: evidence {drift.evidence:.3g} after {drift.observed} parts"


# What a served answer does not carry, said in a client's report.
_NOT_SERVED = (
    "Made from the server's answers: the server does not tell the bundle, its model, precision "
    "or backend, the category's prompts, or its calibration (so the histogram shows this run "
    "alone, with the threshold the answers carry). inctrl-run score --report on the bundle "
    "says them all."
)


def client_header(url: str, category: str) -> Header:
    """The header of a client's run: what the client knows (its threshold is filled in from
    the answers, ``answered``)."""
    fields = (("server", url), ("category", category), *run_fields())
    return Header(f"inctrl inspection report: {category} (served)", fields, notes=(_NOT_SERVED,))


def answered(header: Header, cut: float | None, region: float | None) -> Header:
    """``header`` with what the answers said of the decisions: the threshold and the region
    threshold (the same for every answer of one category; None: none said)."""
    fields = list(header.fields)
    if cut is not None:
        fields.insert(2, ("threshold (from the answers)", f"{cut:.4f}"))
    if region is not None:
        fields.insert(3, ("region threshold (from the answers)", f"{region:.4f}"))
    return replace(header, fields=tuple(fields), threshold=cut)


def reporting_records(
    batches: Iterator[list[dict]], writer: ReportWriter, size: int, picture_size: int
) -> Iterator[list[dict]]:
    """Served records as they come, each batch's cards added to the report first (each
    heatmap drawn on the local image file the request sent, for a model of input side
    ``size``); once the last has passed, the report is written."""
    cut = region = None  # the answers' thresholds, kept from the first that says them
    with writer:
        for batch in batches:
            cards = []
            for record in batch:
                picture = capped(load_image(record["image"]), picture_size)
                result = Result.of_record(record, size, picture)
                cards.append(card_of(result, mvtec_label(record["image"])))
                cut = cut if cut is not None else result.threshold
                region = region if region is not None else result.region_threshold
            writer.add(cards)
            yield batch
        writer.header = answered(writer.header, cut, region)
        writer.finish()
