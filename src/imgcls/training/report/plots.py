"""The report's PNGs, drawn with matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from imgcls.training.report.history import EpochRecord

DPI = 90
ANNOTATE_UP_TO = 20  # classes; beyond that the matrix cells carry no numbers


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)
    figure.savefig(path, format="png", dpi=DPI)
    return path


def curves(epochs: list[EpochRecord], path: Path) -> Path:
    """Loss and accuracy per epoch (train, and validation when there is one), with the
    learning rate on each panel's second axis."""
    figure = Figure(figsize=(11, 4))
    figure.subplots_adjust(left=0.07, right=0.93, bottom=0.13, top=0.95, wspace=0.45)
    numbers = [record.epoch for record in epochs]
    for index, name in enumerate(("loss", "accuracy")):
        axes = figure.add_subplot(1, 2, index + 1)
        train = _floats(r.train.get(name) for r in epochs)
        axes.plot(numbers, train, "o-", label=f"train {name}")
        if any(r.validation for r in epochs):
            validation = _floats((r.validation or {}).get(name) for r in epochs)
            axes.plot(numbers, validation, "s-", label=f"validation {name}")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_ylabel(name)
        axes.grid(alpha=0.3)
        _learning_rate_axis(axes, numbers, [r.learning_rate for r in epochs])
    return _save(figure, path)


def _floats(values) -> np.ndarray:
    """Missing values (None) as NaN, which matplotlib leaves out of a line."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _learning_rate_axis(axes: Axes, numbers: list[int], rates: list[float]) -> None:
    twin = axes.twinx()
    twin.plot(numbers, rates, "--", color="grey", label="learning rate")
    twin.set_ylabel("learning rate")
    lines = axes.get_lines() + twin.get_lines()
    axes.legend(lines, [line.get_label() for line in lines], fontsize="small")


def confusion_matrix(matrix: list[list[int]], names: list[str], path: Path) -> Path:
    """Counts, rows = true class, columns = predicted class."""
    counts = np.asarray(matrix)
    side = min(4 + 0.4 * len(names), 20)
    figure = Figure(figsize=(side + 1, side))
    figure.subplots_adjust(left=0.2, right=0.95, bottom=0.2, top=0.95)
    axes = figure.add_subplot(1, 1, 1)
    image = axes.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=axes)
    ticks = np.arange(len(names))
    if len(names) <= ANNOTATE_UP_TO:
        axes.set_xticks(ticks, names, rotation=90)
        axes.set_yticks(ticks, names)
        middle = counts.max() / 2
        for (row, column), value in np.ndenumerate(counts):
            color = "white" if value > middle else "black"
            axes.text(column, row, str(value), ha="center", va="center", color=color)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    return _save(figure, path)


def per_class_scores(rows: list[dict], path: Path) -> Path:
    """Precision, recall and F1 (and average precision, multi-label) per class, as bars."""
    keys = [k for k in ("precision", "recall", "f1", "average_precision") if k in rows[0]]
    figure = Figure(figsize=(min(4 + 0.5 * len(rows), 24), 4))
    figure.subplots_adjust(bottom=0.3, top=0.95)
    axes = figure.add_subplot(1, 1, 1)
    positions = np.arange(len(rows))
    width = 0.8 / len(keys)
    for offset, key in enumerate(keys):
        values = _floats(row[key] for row in rows)
        axes.bar(positions + offset * width, values, width, label=key)
    axes.set_xticks(positions + width * (len(keys) - 1) / 2, [r["class"] for r in rows])
    axes.tick_params(axis="x", rotation=90)
    axes.set_ylim(0, 1.05)
    axes.legend(fontsize="small")
    return _save(figure, path)
