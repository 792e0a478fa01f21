"""The inspection report: one self-contained HTML file of a run (pictures inlined, no network, no
server: it opens from a USB stick), written atomically and streamed.

A run adds its parts batch by batch (``ReportWriter.add``): each part's card, with its heatmap
as an inline JPEG, goes to a spool file beside the report at once, so memory holds a few
numbers a part, not its pictures. ``finish`` then writes the page: the header (what was scored,
with what, where, when, by which command), the summary (parts, flagged, the flag rate against
the target rate, the drift monitor), the histogram of the calibration's and the run's scores
with the threshold, for labelled input the ROC curve, the confusion matrix and the recall per
defect type, and the gallery, most anomalous first, with a filter for flagged parts.

A run of more than ``cap`` parts shows, in the gallery, every flagged part, then the
highest-scoring others up to half the room left, then a seeded sample of the rest, and says
so; the charts and counts always cover every part.
"""

from __future__ import annotations

import base64
import datetime
import io
import os
import shlex
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from inctrl_runtime.errors import InputError
from inctrl_runtime.files import atomic_path, check_output_path, make_folder, writing
from inctrl_runtime.machine import describe_machine
from inctrl_runtime.pixel_metrics import pair_auroc
from inctrl_runtime.report_charts import histogram, roc
from inctrl_runtime.results import Result

DEFAULT_CAP = 500  # gallery cards at most, beyond the flagged parts
CARD_SIZE = 256  # pixels of a card's picture's longer side
PROMPT_SIZE = 96  # pixels of a prompt thumbnail's longer side
NORMAL_LABEL = "good"  # the MVTec layout's folder of normal test images
_SAMPLE_SEED = 0


@dataclass(frozen=True)
class Card:
    """One part in the gallery: its name, score and decision, and its heatmap (JPEG bytes;
    None: no picture). ``label`` is its ground truth for labelled input ("good" or the
    defect type; None: unlabelled)."""

    name: str
    score: float
    p_value: float | None = None
    anomalous: bool | None = None
    regions: int | None = None
    picture: bytes | None = None
    label: str | None = None


@dataclass(frozen=True)
class Header:
    """What a report says of its run before its parts: a title, the (name, value) fields, the
    prompts (name, PNG thumbnail or None), notes (e.g. what a server does not tell), and the
    calibration the decisions use (its scores, the threshold and the target rate; None
    where the category is not calibrated)."""

    title: str
    fields: tuple[tuple[str, str], ...]
    prompts: tuple[tuple[str, bytes | None], ...] = ()
    notes: tuple[str, ...] = ()
    calibration: np.ndarray | None = None
    threshold: float | None = None
    target_fpr: float | None = None


def jpeg(picture: Image.Image, size: int = CARD_SIZE) -> bytes:
    """A picture as JPEG bytes, its longer side at most ``size``."""
    small = picture.convert("RGB")
    small.thumbnail((size, size), Image.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=82)
    return buffer.getvalue()


def png(pixels: np.ndarray) -> bytes:
    """An H x W x 3 uint8 picture (e.g. a bank's prompt thumbnail) as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def command_line(program: str) -> str:
    """The command this process runs, as a shell would take it."""
    return shlex.join([program, *sys.argv[1:]])


def run_fields(program: str = "inctrl-run") -> tuple[tuple[str, str], ...]:
    """The machine, the date and the command: every report says them."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return (("machine", describe_machine()), ("date", now), ("command", command_line(program)))


def card_of(result: Result, label: str | None = None) -> Card:
    """A scored part's card: its heatmap (regions boxed, no caption: the card says it) as a
    small JPEG, where its picture was kept."""
    picture = None if result.picture is None else jpeg(result.heatmap(caption=False))
    regions = None if result.regions is None else len(result.regions)
    return Card(result.image, result.score, result.p_value, result.anomalous, regions, picture,
                label)  # fmt: skip


def mvtec_label(image: str | os.PathLike) -> str | None:
    """The ground truth of an image in the MVTec layout (``<category>/test/<defect>/<name>``):
    its defect folder's name ("good" for normal parts); None elsewhere."""
    path = Path(image)
    return path.parent.name if path.parent.parent.name == "test" else None


def check_report_path(path: str | os.PathLike, option: str = "--report") -> Path:
    """Refuse, in one line, a report path that is a folder or lies in a bundle, or does not end
    in .html, before any work."""
    target = Path(path)
    check_output_path(target, option)
    if target.is_dir():
        raise InputError(f"{option} {target}: is a folder; name the HTML file to write")
    if target.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"{option} {target}: name an .html file, e.g. {option} report.html")
    return target


@dataclass
class _Section:
    """One section of a report (a run of one category): its header, and what the writer keeps
    of each part: a few numbers, and where its card is spooled."""

    header: Header
    scores: list[float] = field(default_factory=list)
    flagged: list[bool | None] = field(default_factory=list)
    labels: list[str | None] = field(default_factory=list)
    spans: list[tuple[int, int]] = field(default_factory=list)


class ReportWriter:
    """Writes one report: ``add`` each batch's cards as it finishes, then ``finish`` (use it as
    a context manager: a run that fails leaves no report and no spool). The page's ``header``
    heads its one section, or, where ``section`` begins others (the categories of an
    evaluation), the page, each section then under its own."""

    def __init__(self, path: str | os.PathLike, header: Header, cap: int = DEFAULT_CAP) -> None:
        self.path = check_report_path(path)
        self.header = header
        self.cap = cap
        with writing(self.path):
            make_folder(self.path.parent)
            # closed by __exit__: the spool lives as long as the writer
            self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=".report-")  # noqa: SIM115
        self._sections: list[_Section] = []

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._spool.close()

    def section(self, header: Header) -> None:
        """Begin a section: the parts added from now on are its."""
        self._sections.append(_Section(header))

    def add(self, cards: Iterable[Card]) -> None:
        """Spool the cards of a batch (their pictures leave memory with them)."""
        if not self._sections:
            self._sections.append(_Section(self.header))
        section = self._sections[-1]
        for card in cards:
            html = _card_html(card).encode()
            start = self._spool.seek(0, io.SEEK_END)
            with writing(self.path):
                self._spool.write(html)
            section.scores.append(float(card.score))
            section.flagged.append(card.anomalous)
            section.labels.append(card.label)
            section.spans.append((start, len(html)))

    def finish(self, monitor: str | None = None) -> Path:
        """Write the report (atomically) with the drift monitor's state line (None: not
        monitored) and return its path."""
        sections = self._sections or [_Section(self.header)]
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            out.write(_page_top(self.header))
            for section in sections:
                out.write("<section>")
                if section.header is not self.header:
                    out.write(_section_top(section.header))
                self._write_section(out, section, monitor)
                out.write("</section>")
            out.write(_PAGE_END)
        return self.path

    def _write_section(self, out: io.TextIOBase, section: _Section, monitor: str | None) -> None:
        shown, cut_note = gallery_rows(section.scores, section.flagged, self.cap)
        out.write(_summary(section.header, section, monitor))
        out.write(_distribution(section.header, section))
        out.write(_labelled(section))
        out.write(_gallery_top(len(section.scores), len(shown), cut_note))
        for row in shown:
            start, length = section.spans[row]
            self._spool.seek(start)
            out.write(self._spool.read(length).decode())
        out.write("</div>")


def gallery_rows(
    scores: Sequence[float], flagged: Sequence[bool | None], cap: int, seed: int = _SAMPLE_SEED
) -> tuple[list[int], str | None]:
    """The parts the gallery shows, highest score first (ties in run order), and the sentence
    that says how they were chosen when not all are (None: all are): every flagged part, the
    highest-scoring others up to half the room left under ``cap``, and a sample of the rest
    (seeded) to fill it."""
    count = len(scores)
    order = sorted(range(count), key=lambda row: -scores[row])
    if count <= cap:
        return order, None
    chosen = [row for row in order if flagged[row]]
    others = [row for row in order if not flagged[row]]
    room = max(cap - len(chosen), 0)
    top, rest = others[: room // 2], others[room // 2 :]
    drawn = np.random.default_rng(seed).choice(len(rest), min(room - len(top), len(rest)),
                                               replace=False)  # fmt: skip
    sample = [rest[i] for i in drawn]
    keep = set(chosen) | set(top) | set(sample)
    note = (
        f"Showing {len(keep)} of {count} parts: all {len(chosen)} flagged, the {len(top)} "
        f"highest-scoring others, and {len(sample)} drawn at random (seed {seed}) from the other "
        f"{len(rest)}. The counts and charts above cover every part."
    )
    return [row for row in order if row in keep], note


# ------------------------------------------------------------------------------------ the page
_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:16px;color:#222}
h1{font-size:22px;margin:4px 0 12px}h2{font-size:19px;margin:30px 0 8px;border-top:2px solid #333}
h3{font-size:16px;margin:20px 0 8px}
table.fields td{padding:1px 12px 1px 0;vertical-align:top}table.fields td:first-child{color:#666}
.prompts{display:flex;gap:8px;flex-wrap:wrap}.prompts figure{margin:0;font-size:11px;width:96px}
.prompts img{display:block;max-width:96px;max-height:96px;border:1px solid #ccc}
.note{background:#fff6dd;border-left:4px solid #e0b030;padding:4px 8px;margin:6px 0}
.summary{display:flex;gap:24px;flex-wrap:wrap}.summary div{background:#f3f5f8;padding:8px 14px}
.summary b{display:block;font-size:20px}.chart{width:100%;max-width:640px;font-size:11px}
.chart .plot{fill:#fafafa;stroke:#ccc}.roc{max-width:260px}
.legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 12px}
.labelled{display:flex;gap:32px;flex-wrap:wrap;align-items:flex-start}
table.grid{border-collapse:collapse}
table.grid td,table.grid th{border:1px solid #ccc;padding:3px 8px;text-align:right}
.filter button{margin-right:6px;padding:4px 10px;border:1px solid #999;background:#fff}
.filter button.on{background:#333;color:#fff}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin-top:10px}
.card{margin:0;width:260px;border:1px solid #ddd;padding:4px;background:#fff}
.card[hidden]{display:none}.card img{display:block;max-width:256px;max-height:256px}
.card figcaption{font-size:12px;word-break:break-all}
.card .anomalous{color:#c0392b;font-weight:bold}.card .normal{color:#2e7d32}
"""

_SCRIPT = """
document.querySelectorAll('.filter').forEach(bar=>{
  const section=bar.closest('section'), buttons=bar.querySelectorAll('button');
  buttons.forEach(b=>b.addEventListener('click',()=>{
    let shown=0;
    section.querySelectorAll('.card').forEach(c=>{
      c.hidden=!(b.dataset.show==='all'||c.dataset.flagged===b.dataset.show);
      if(!c.hidden)shown++;});
    buttons.forEach(o=>o.classList.toggle('on',o===b));
    bar.querySelector('.shown').textContent=shown;
  }));
});
"""

_PAGE_END = f"<script>{_SCRIPT}</script></body></html>\n"


def _picture(kind: str, data: bytes | None) -> str:
    """An inline <img> of ``data`` (PNG or JPEG bytes; None: nothing)."""
    if data is None:
        return ""
    return f'<img src="data:image/{kind};base64,{base64.b64encode(data).decode()}" alt="">'


def _described(header: Header) -> str:
    """A header's fields as a table, its notes, and its prompts' thumbnails."""
    rows = "".join(f"<tr><td>{escape(name)}</td><td>{escape(value)}</td></tr>"
                   for name, value in header.fields)  # fmt: skip
    prompts = ""
    if header.prompts:
        figures = "".join(
            f"<figure>{_picture('png', data)}{escape(Path(name).name)}</figure>"
            for name, data in header.prompts
        )
        prompts = f'<h3>Prompts</h3><div class="prompts">{figures}</div>'
    notes = "".join(f'<p class="note">{escape(note)}</p>' for note in header.notes)
    return f'<table class="fields">{rows}</table>{notes}{prompts}'


def _section_top(header: Header) -> str:
    return f'<h2 class="section">{escape(header.title)}</h2>{_described(header)}'


def _page_top(header: Header) -> str:
    policy = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
              "script-src 'unsafe-inline'")  # fmt: skip
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{policy}">'
        f"<title>{escape(header.title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{escape(header.title)}</h1>{_described(header)}"
    )


def _summary(header: Header, section: _Section, monitor: str | None) -> str:
    count = len(section.scores)
    decided = [flag for flag in section.flagged if flag is not None]
    boxes = [("parts scored", str(count))]
    if decided:
        flagged = sum(decided)
        boxes.append(("flagged", str(flagged)))
        rate = f"{flagged / len(decided):.1%}"
        if header.target_fpr is not None:
            rate += f" (target rate {header.target_fpr:g})"
        boxes.append(("flag rate", rate))
        labels = section.labels
        if all(label is not None for label in labels) and NORMAL_LABEL in labels:
            good = [flag for flag, label in zip(section.flagged, labels, strict=True)
                    if label == NORMAL_LABEL and flag is not None]  # fmt: skip
            boxes.append(("good parts flagged", f"{sum(good)} of {len(good)}"))
    else:
        boxes.append(("decisions", "none: no calibration decides this run"))
    if monitor is not None:
        boxes.append(("drift monitor", monitor))
    cells = "".join(f'<div class="summary-{escape(name.split()[0])}">{escape(name)}'
                    f"<b>{escape(value)}</b></div>" for name, value in boxes)  # fmt: skip
    return f'<h3>Summary</h3><div class="summary">{cells}</div>'


def _distribution(header: Header, section: _Section) -> str:
    calibration = np.asarray([] if header.calibration is None else header.calibration)
    run = np.asarray(section.scores)
    if not run.size:
        return ""
    legend = (f'<p class="legend"><span style="background:#8aa4c8"></span>calibration '
              f'(n = {calibration.size})<span style="background:#e07b39"></span>this run '
              f"(n = {run.size})")  # fmt: skip
    if header.threshold is not None:
        legend += (f'<span style="background:#c0392b;width:3px"></span>threshold '
                   f"{header.threshold:.4f}")  # fmt: skip
    chart = histogram(calibration, run, header.threshold)
    return f"<h3>Scores</h3>{legend}</p>{chart}"


def _labelled(section: _Section) -> str:
    """ROC, AUROC, confusion matrix and recall per defect type, where every part is labelled
    and both kinds are present ("" otherwise)."""
    labels = section.labels
    if not labels or any(label is None for label in labels):
        return ""
    scores = np.asarray(section.scores)
    normal = np.array([label == NORMAL_LABEL for label in labels])
    if normal.all() or not normal.any():
        return ""
    auroc = pair_auroc(np.sort(scores[normal]), scores[~normal])
    parts = [f"<div>{roc(scores[normal], scores[~normal], auroc)}</div>"]
    if all(flag is not None for flag in section.flagged):
        flagged = np.array(section.flagged, dtype=bool)
        cells = [[int((normal & ~flagged).sum()), int((normal & flagged).sum())],
                 [int((~normal & ~flagged).sum()), int((~normal & flagged).sum())]]  # fmt: skip
        parts.append(
            '<div><table class="grid confusion"><tr><th></th><th>not flagged</th>'
            f"<th>flagged</th></tr><tr><th>good</th><td>{cells[0][0]}</td><td>{cells[0][1]}</td>"
            f"</tr><tr><th>defective</th><td>{cells[1][0]}</td><td>{cells[1][1]}</td></tr>"
            "</table><p>at the calibrated threshold</p></div>"
        )
        kinds = sorted({label for label in labels if label != NORMAL_LABEL})
        rows = ""
        for kind in kinds:
            of_kind = np.array([label == kind for label in labels])
            found = int((of_kind & flagged).sum())
            rows += (f"<tr><th>{escape(kind)}</th><td>{found} / {int(of_kind.sum())}</td>"
                     f"<td>{found / of_kind.sum():.0%}</td></tr>")  # fmt: skip
        parts.append('<div><table class="grid recall"><tr><th>defect</th><th>flagged</th>'
                     f"<th>recall</th></tr>{rows}</table></div>")  # fmt: skip
    return (f'<h3>Against the labels (AUROC {auroc:.3f})</h3><div class="labelled">'
            f"{''.join(parts)}</div>")  # fmt: skip


def _gallery_top(count: int, shown: int, cut_note: str | None) -> str:
    note = "" if cut_note is None else f'<p class="note cap">{escape(cut_note)}</p>'
    return (
        f"<h3>Parts, most anomalous first</h3>{note}"
        '<div class="filter"><button class="on" data-show="all">all</button>'
        '<button data-show="true">flagged</button><button data-show="false">not flagged</button>'
        f' showing <span class="shown">{shown}</span> of {count}</div><div class="gallery">'
    )


def _card_html(card: Card) -> str:
    flagged = "unknown" if card.anomalous is None else str(bool(card.anomalous)).lower()
    picture = _picture("jpeg", card.picture)
    facts = [f"score {card.score:.4f}"]
    if card.p_value is not None:
        facts.append(f"p {card.p_value:.3g}")
    if card.anomalous is not None:
        kind = "anomalous" if card.anomalous else "normal"
        facts.append(f'<span class="{kind}">{"ANOMALOUS" if card.anomalous else "normal"}</span>')
    if card.regions is not None:
        facts.append(f"{card.regions} region{'s' if card.regions != 1 else ''}")
    if card.label is not None:
        facts.append(f"truth: {escape(card.label)}")
    return (
        f'<figure class="card" data-flagged="{flagged}" data-score="{card.score!r}">{picture}'
        f'<figcaption><div class="name">{escape(card.name)}</div>{" · ".join(facts)}'
        "</figcaption></figure>"
    )
