"""Writes output/data/report.json, report.html and their PNGs at the end of a job; never fatal.

report.json holds everything the PNGs and the page show: training/report/drawing.py draws them
from it, here or in the supervising parent (training/report/handoff.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgcls.model import artifact
from imgcls.training.report.confusion import per_class
from imgcls.training.report.drawing import REPORT_JSON, draw_report_safely, warn
from imgcls.training.report.history import History

NO_VALIDATION = "No validation channel: no confusion matrix and no per-class scores."
NO_COUNTS = (
    "The kept epoch's validation counts were not recorded (it ran before a resume from a state "
    "without them): no confusion matrix and no per-class scores."
)


@dataclass
class ReportInputs:
    """What the report describes beside the history."""

    hyperparameters: dict
    classes: list[str] | None
    num_classes: int
    num_hosts: int = 1


def model_epochs(model_dir: Path) -> list[int]:
    """The 0-based epochs that have a params file in model/, ascending."""
    epochs = artifact.list_params_epochs(model_dir) if model_dir.is_dir() else []
    return [epoch - 1 for epoch in epochs]


def kept_epoch(model_dir: Path) -> int | None:
    """The 0-based epoch of the model that serving loads from model/ (the newest params file)."""
    epochs = model_epochs(model_dir)
    return epochs[-1] if epochs else None


def report_data(history: History, kept: int | None, inputs: ReportInputs) -> dict:
    """report.json's content; `images` maps titles to the PNG files written beside it."""
    names = inputs.classes or [str(i) for i in range(inputs.num_classes)]
    record = history.at(kept) if kept is not None else None
    counts = record.counts if record is not None else None
    images = {"Loss and accuracy per epoch": "curves.png"}
    report = {
        "kept_epoch": kept,
        "model_params": artifact.params_path(Path(), kept + 1).name if kept is not None else None,
        "classes": names,
        "hosts": inputs.num_hosts,
        "throughput": "images/s of the leader host's training, per epoch",
        "hyperparameters": inputs.hyperparameters,
        "epochs": [{k: v for k, v in vars(r).items() if k != "counts"} for r in history.epochs],
        "confusion_matrix": None,
        "per_class": [],
        "notes": [],
        "images": images,
    }
    if counts is None:
        validated = any(r.validation for r in history.epochs)
        report["notes"].append(NO_COUNTS if validated else NO_VALIDATION)
        return report
    report["per_class"] = per_class(counts, names)
    images["Per-class scores"] = "per_class.png"
    if "confusion_matrix" in counts:
        report["confusion_matrix"] = counts["confusion_matrix"]
        images["Confusion matrix (rows: true class, columns: predicted)"] = "confusion_matrix.png"
    else:
        report["notes"].append(
            "Multi-label: per-class TP/FP/FN/TN (a class is predicted when its probability "
            "exceeds 0.5) and average precision instead of a confusion matrix."
        )
        report["mean_average_precision"] = (record.validation or {}).get("mean_average_precision")
    return report


def write_report_json(folder: Path, report: dict) -> Path:
    """report.json in `folder` (NaN and infinities as null); returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / REPORT_JSON
    target.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    return target


def _finite(value):
    """NaN and infinities as null, so that report.json is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write_report_safely(
    folder: Path,
    history: History,
    model_dir: Path,
    inputs: ReportInputs,
    hand_over: Callable[[Path], None] | None = None,
) -> None:
    """report.json, then the PNGs and report.html, here or by `hand_over(folder)` (another
    process draws them); any failure logged as a warning: the job and its model go on."""
    try:
        write_report_json(folder, report_data(history, kept_epoch(model_dir), inputs))
    except Exception as error:
        warn(error)
        return
    if hand_over is not None:
        try:
            hand_over(folder)
            return
        except OSError:
            pass  # nobody listens any more: drawn here
    draw_report_safely(folder)
