"""What a bundle holds, as ``inctrl-run info`` reports it: the model, each graph's precision (and
quantization), the export check, its TensorRT builds, and per category its text prior,
registered bank and calibration.

``bundle_info`` gathers the facts as a JSON-ready dict (``info --json``); ``info_sections`` puts
them in words, the rows of a two-column table, section by section. Nothing here prints.
"""

from __future__ import annotations

import datetime
from pathlib import Path

from inctrl_runtime.bundle import REFERENCES_DIR, Bundle
from inctrl_runtime.decisions import TARGET_FPRS, Calibration, min_normals, threshold
from inctrl_runtime.engines.tensorrt.plans import Build
from inctrl_runtime.errors import InputError
from inctrl_runtime.fewshot import check_category_name
from inctrl_runtime.manifest import ExportCheck
from inctrl_runtime.references import load_registered

Row = tuple[str, str]


def target_thresholds(calibration: Calibration) -> dict[float, float | None]:
    """The calibration's score threshold at each target false-positive rate (``TARGET_FPRS``),
    None where it has too few images for that rate."""
    return {alpha: threshold(calibration.scores, alpha) for alpha in TARGET_FPRS}


def target_region_thresholds(calibration: Calibration) -> dict[float, float | None] | None:
    """The calibration's region threshold at each target rate (None where it has too few
    images for that rate); None for a calibration that keeps no map maxima."""
    if calibration.map_maxima is None:
        return None
    return {alpha: threshold(calibration.map_maxima, alpha) for alpha in TARGET_FPRS}


def bundle_info(bundle: Path) -> dict:
    """What a bundle holds, as ``inctrl-run info --json`` prints it: the model, each graph's
    precision, the export check, and per category its text prior, registered bank and
    calibration. A bank that cannot be used is reported damaged, with the reason."""
    checked = Bundle.open(bundle)
    model = checked.model
    banks = [path.stem for path in sorted((checked.path / REFERENCES_DIR).glob("*.npz"))]
    extra = [name for name in banks if name not in checked.priors and _is_category_name(name)]
    return {
        "bundle": str(checked.path),
        "demo": checked.is_demo,
        "source_file": checked.source_file,
        "model": {
            "preset": model.preset,
            "backbone": model.backbone,
            "image_size": model.image_size,
            "embed_dim": model.embed_dim,
            "tapped_blocks": list(model.tapped_blocks),
        },
        "graphs": {
            name: {
                "file": str(graph.file.relative_to(checked.path)),
                "precision": graph.precision,
                **({"quantization": graph.quantization.summary()} if graph.quantization else {}),
            }
            for name, graph in checked.graphs.items()
        },
        "export_check": _export_check(checked.verification),
        "tensorrt": {
            key: _build_info(checked.path, build) for key, build in checked.builds.items()
        },
        "categories": {
            category: _category_info(checked, category)
            for category in (*checked.categories, *extra)
        },
    }


def _export_check(check: ExportCheck | None) -> dict | None:
    """An export's own check against PyTorch, as ``info --json`` prints it (None: not run)."""
    return None if check is None else {"passed": check.passed, "max_abs_diff": check.max_abs_diff}


def _build_info(bundle: Path, build: Build) -> dict:
    """One TensorRT build as the manifest records it, and whether its plans are in the folder
    (their sha256 is checked when a plan opens)."""
    return {
        "precision": build.precision,
        "tensorrt": build.tensorrt,
        "compute_capability": str(build.compute_capability),
        "gpu": build.gpu,
        "version_compatible": build.version_compatible,
        "batch": list(build.batch),
        "shots": list(build.shots),
        "plans": {
            graph: {
                "file": plan.file,
                "bytes": plan.bytes,
                "build_seconds": plan.build_seconds,
                "present": (bundle / plan.file).is_file(),
            }
            for graph, plan in build.plans.items()
        },
        "check": _export_check(build.check),
    }


def _is_category_name(name: str) -> bool:
    try:
        check_category_name(name)
    except InputError:
        return False  # not a file any command reads as a category's bank
    return True


def _category_info(bundle: Bundle, category: str) -> dict:
    path = bundle.reference_path(category)
    info = {"prior": category in bundle.priors, "bank": None, "calibration": None}
    if not path.is_file():
        return info
    modified = datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.timezone.utc)
    bank_info = {"file": str(path), "modified": modified.isoformat(timespec="seconds")}
    try:
        bank = load_registered(bundle, category)
    except InputError as err:
        info["bank"] = {
            **bank_info,
            "damaged": str(err),
            "shots": None,
            "sources": None,
            "selection": None,
            "tiling": None,
        }
        return info
    info["bank"] = {
        **bank_info,
        "damaged": None,
        "shots": bank.shots,
        "sources": list(bank.sources),
        "selection": bank.selection,
        "tiling": None
        if bank.tiling is None
        else {**bank.tiling.record(), "frame_size": list(bank.frame_size)},
    }
    calibration = bank.calibration
    if calibration is not None:
        info["calibration"] = {
            "n": calibration.n,
            "backend": calibration.backend,
            "precision": calibration.precision,
            "created": calibration.created,
            "thresholds": {f"{a:g}": cut for a, cut in target_thresholds(calibration).items()},
            "region_thresholds": _by_rate(target_region_thresholds(calibration)),
        }
    return info


def info_sections(found: dict) -> list[list[Row]]:
    """``bundle_info`` in words: the rows (name, value) of the bundle, then of each category."""
    return [
        _bundle_rows(found),
        *(_category_rows(name, category) for name, category in found["categories"].items()),
    ]


def _bundle_rows(found: dict) -> list[Row]:
    model, check = found["model"], found["export_check"]
    blocks = ", ".join(map(str, model["tapped_blocks"]))
    sizes = f"image {model['image_size']}, embedding {model['embed_dim']}, tapped blocks {blocks}"
    rows = [("model", f"{model['preset']}: {model['backbone']}"), ("sizes", sizes)]
    for name, graph in found["graphs"].items():
        text = f"{graph['file']} ({graph['precision']})"
        record = graph.get("quantization")
        if record:
            text += (
                f", {record.get('format')}: activations {record.get('activations')}, weights "
                f"{record.get('weights')}, calibrated by {record.get('method')} on "
                f"{record.get('images')} images"
            )
            text += f"; {record['split']}"
            if record.get("fp32_because"):
                text += f", chosen by {record['fp32_because']}"
        rows.append((f"{name} graph", text))
    if check is None:
        verdict = "none recorded"
    else:
        verdict = "passed" if check["passed"] else "FAILED"
        if check["max_abs_diff"] is not None:
            verdict += f", max abs diff {check['max_abs_diff']:.3g}"
    rows += [
        ("export check", verdict),
        *_tensorrt_rows(found["tensorrt"]),
        ("demo model", "yes (synthetic data only)" if found["demo"] else "no"),
        ("source", found["source_file"] or "a model in memory"),
    ]
    return rows


def _tensorrt_rows(builds: dict) -> list[Row]:
    if not builds:
        return [("tensorrt engines", "none (inctrl-export tensorrt builds them)")]
    rows = []
    for key, build in builds.items():
        plans = build["plans"].values()
        size = sum(plan["bytes"] for plan in plans) / 2**20
        seconds = sum(plan["build_seconds"] for plan in plans)
        missing = [plan["file"] for plan in plans if not plan["present"]]
        text = (
            f"{build['gpu'] or 'GPU'} (sm {build['compute_capability']}), TensorRT "
            f"{build['tensorrt']}{', version-compatible' if build['version_compatible'] else ''}"
            f", batch {'/'.join(map(str, build['batch']))}, k {'/'.join(map(str, build['shots']))}"
            f", {len(plans)} plans {size:.1f} MB, built in {seconds:.0f} s"
        )
        check = build["check"]
        if check is not None:
            text += f", check {'passed' if check['passed'] else 'FAILED'}"
            if check["max_abs_diff"] is not None:
                text += f" ({check['max_abs_diff']:.3g})"
        if missing:
            text += f", MISSING {', '.join(missing)}"
        rows.append((f"tensorrt {key}", text))
    return rows


def _selection_rows(selection: dict | None) -> list[Row]:
    if not selection:
        return []
    text = f"{selection.get('method')} from a pool of {selection.get('pool')}"
    residual = selection.get("mean_residual")
    if isinstance(residual, (int, float)):
        text += f", mean patch residual {residual:.4f}"
    return [("selected", text)]


def _tiling_rows(tiling: dict | None) -> list[Row]:
    if not tiling:
        return []
    width, height = tiling["frame_size"]
    grid = f"{tiling['rows']}x{tiling['columns']}" + ("+whole" if tiling["whole"] else "")
    return [("tiles", f"{grid} over {width} x {height} frames (overlap >= {tiling['overlap']:g})")]


def _category_rows(name: str, category: dict) -> list[Row]:
    bank, calibration = category["bank"], category["calibration"]
    rows = [("category", name), ("text prior", "yes" if category["prior"] else "none")]
    if bank is None:
        return [*rows, ("bank", "not registered")]
    if bank["damaged"]:
        return [*rows, ("bank", f"DAMAGED: {bank['damaged']}")]
    rows += [
        ("bank", f"k = {bank['shots']}, file written {bank['modified']}"),
        ("prompts", ", ".join(bank["sources"])),
        *_selection_rows(bank["selection"]),
        *_tiling_rows(bank["tiling"]),
    ]
    if calibration is None:
        return [*rows, ("calibration", "none")]
    made = f"{calibration['backend']} {calibration['precision']}, {calibration['created']}"
    rows.append(("calibration", f"n = {calibration['n']}, {made}"))
    for rate, cut in calibration["thresholds"].items():
        needs = f"none: needs n >= {min_normals(float(rate))}"
        rows.append((f"threshold @ fpr {rate}", needs if cut is None else f"{cut:.4f}"))
    regions = calibration["region_thresholds"]
    if regions is None:
        return [*rows, ("regions", "none: calibrated before regions were kept; calibrate again")]
    for rate, cut in regions.items():
        needs = f"none: needs n >= {min_normals(float(rate))}"
        rows.append((f"region threshold @ {rate}", needs if cut is None else f"{cut:.4f}"))
    return rows


def _by_rate(thresholds: dict[float, float | None] | None) -> dict[str, float | None] | None:
    return None if thresholds is None else {f"{a:g}": cut for a, cut in thresholds.items()}
