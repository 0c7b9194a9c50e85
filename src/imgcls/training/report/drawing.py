"""report.json's PNGs and report.html, drawn from the file alone: no MXNet, and matplotlib only
when drawing (so the supervising parent, which never imports MXNet, can draw them)."""

from __future__ import annotations

import json
from pathlib import Path

from imgcls.log import logger
from imgcls.training.report import page
from imgcls.training.report.history import History

REPORT_JSON = "report.json"


def draw_report(folder: Path) -> Path:
    """The PNGs, then report.html, from `folder`'s report.json; returns report.html's path."""
    from imgcls.training.report import plots  # matplotlib: only the process that draws loads it

    report = json.loads((folder / REPORT_JSON).read_text())
    plots.curves(_records(report), folder / "curves.png")
    if report["per_class"]:
        plots.per_class_scores(report["per_class"], folder / "per_class.png")
    if report["confusion_matrix"] is not None:
        matrix_png = folder / "confusion_matrix.png"
        plots.confusion_matrix(report["confusion_matrix"], report["classes"], matrix_png)
    target = folder / "report.html"
    target.write_text(page.render(report, folder))
    return target


def _records(report: dict) -> list:
    history = History()
    history.restore(report["epochs"])
    return history.epochs


def draw_report_safely(folder: Path) -> None:
    """draw_report, any failure logged as a warning."""
    try:
        logger.info("Training report: %s", draw_report(folder))
    except Exception as error:
        warn(error)


def warn(error: Exception) -> None:
    logger.warning(
        "The training report was not written (%s: %s); the model is unaffected.",
        type(error).__name__,
        error,
    )
