"""report.html: one self-contained page (PNGs inline as data URIs, no external reference)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

STYLE = (
    "body{font-family:sans-serif;margin:2em;max-width:1100px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
    "th{background:#eee}img{max-width:100%}"
)


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape("" if value is None else str(value))


def table(rows: list[dict]) -> str:
    """An HTML table of dicts with the same keys (the first row's keys are the columns)."""
    if not rows:
        return ""
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(row.get(c))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def epoch_rows(report: dict) -> list[dict]:
    rows = []
    for record in report["epochs"]:
        validation = record["validation"] or {}
        rows.append(
            {
                "epoch": record["epoch"],
                "train loss": record["train"].get("loss"),
                "train accuracy": record["train"].get("accuracy"),
                "validation loss": validation.get("loss"),
                "validation accuracy": validation.get("accuracy"),
                "learning rate": record["learning_rate"],
                "images/s": record["images_per_second"],
                "seconds": record["seconds"],
            }
        )
    return rows


def render(report: dict, folder: Path) -> str:
    """The page for `report` (report.json's content), its images read from `folder`."""
    images = "".join(
        f'<h2>{html.escape(title)}</h2><img alt="{html.escape(title)}" '
        f'src="{data_uri(folder / name)}">'
        for title, name in report["images"].items()
    )
    notes = "".join(f"<p><em>{html.escape(note)}</em></p>" for note in report["notes"])
    parameters = [{"name": k, "value": json.dumps(v)} for k, v in report["hyperparameters"].items()]
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>imgcls training report</title><style>{STYLE}</style></head><body>"
        "<h1>Training report</h1>"
        f"<p>Model kept: epoch {_cell(report['kept_epoch'])} ({_cell(report['model_params'])})"
        f", {len(report['epochs'])} epoch(s) recorded.</p>{notes}"
        f"<h2>Epochs</h2>{table(epoch_rows(report))}{images}"
        f"<h2>Per class, epoch {_cell(report['kept_epoch'])}</h2>{table(report['per_class'])}"
        f"<h2>Hyperparameters</h2>{table(parameters)}</body></html>"
    )
