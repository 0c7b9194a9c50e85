"""Labels from every input (.lst columns, RecordIO headers, manifest strings), checked one way.

A label row is float32: `[class]` for single-label jobs, one 0/1 value per class (multi-hot)
with multi_label=1, which is what MXNet's ImageRecordIter yields for `label_width`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np

from imgcls.errors import ClientError
from imgcls.log import logger

CLASS_ID = "class-id"
MULTI_HOT = "multi-hot"
LABEL_FORMATS = (CLASS_ID, MULTI_HOT)


def label_row(
    values: Sequence[float], where: str, num_classes: int, multi_label: bool
) -> np.ndarray:
    """Check labels given as numbers (.lst columns, RecordIO header) and return the label row."""
    labels = np.atleast_1d(np.asarray(values, dtype=np.float64))
    width = num_classes if multi_label else 1
    if labels.size != width:
        expected = (
            f"one 0/1 column per class, num_classes={num_classes}"
            if multi_label
            else "one class index, as multi_label=0"
        )
        raise ClientError(
            f"{where}: {labels.size} label(s), expected {width} ({expected}). "
            "Fix the labels, or num_classes / multi_label."
        )
    if multi_label:
        if not np.isin(labels, (0.0, 1.0)).all():
            raise ClientError(
                f"{where}: multi-hot labels must be 0 or 1, got {labels.tolist()}. "
                "Write one 0/1 column per class."
            )
        return labels.astype(np.float32)
    _check_class(labels[0], where, num_classes)
    return labels.astype(np.float32)


def _check_class(label: float, where: str, num_classes: int) -> None:
    if not (label == math.floor(label) and 0 <= label < num_classes):
        raise ClientError(
            f"{where}: label {label:g} is outside [0, {num_classes}) or not an integer. "
            "Labels must be class indices 0..num_classes-1: fix the label or num_classes."
        )


def text_label_row(
    text: bytes, where: str, num_classes: int, multi_label: bool, label_format: str
) -> np.ndarray:
    """An augmented-manifest label: `3`, `[1, 0, 1]` (multi-hot) or, as class ids, `[0, 2]`.

    A single number is always a class id; a list is multi-hot unless label_format is class-id.
    """
    value = _parse_label_text(text, where)
    if isinstance(value, list) and label_format == MULTI_HOT:
        row = label_row(value, where, num_classes, multi_label=True)
    else:
        row = _multi_hot(value if isinstance(value, list) else [value], where, num_classes)
    if multi_label:
        return row
    positives = np.flatnonzero(row)
    if positives.size != 1:
        raise ClientError(
            f"{where}: label {text.decode(errors='replace')!r} names {positives.size} classes; "
            "a single-label job (multi_label=0) needs exactly one. Set multi_label=1 or fix it."
        )
    return positives.astype(np.float32)


def _parse_label_text(text: bytes, where: str) -> float | list[float]:
    shown = text[:80].decode("utf-8", errors="replace")
    try:
        value = json.loads(text.decode("utf-8"))
        if isinstance(value, str):
            value = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError):
        value = None
    if isinstance(value, bool) or not (
        isinstance(value, int | float)
        or (isinstance(value, list) and all(isinstance(v, int | float) for v in value))
    ):
        raise ClientError(
            f"{where}: label record {shown!r} is not a number or a list of numbers. "
            "Labels look like 3, [1, 0, 1] (multi-hot) or [0, 2] (label-format=class-id); "
            "check the AttributeNames of the channel (image attribute first, then the label)."
        )
    return value


def _multi_hot(class_ids: list[float], where: str, num_classes: int) -> np.ndarray:
    row = np.zeros(num_classes, dtype=np.float32)
    for class_id in class_ids:
        _check_class(float(class_id), where, num_classes)
        row[int(class_id)] = 1.0
    return row


def count_classes(rows: np.ndarray, num_classes: int, multi_label: bool) -> np.ndarray:
    """Examples per class (positives per class with multi_label) of a (N, width) label array."""
    if multi_label:
        return rows.sum(axis=0).astype(np.int64)
    return np.bincount(rows[:, 0].astype(np.int64), minlength=num_classes)


def positive_weights(class_counts: np.ndarray, count: int) -> np.ndarray:
    """Weight of each class's positives: negatives / positives (1 for a class that is never,
    or always, present)."""
    positives = class_counts.astype(np.float64)
    negatives = count - positives
    seen = (positives > 0) & (negatives > 0)
    weights = np.divide(negatives, positives, out=np.ones_like(positives), where=seen)
    return weights.astype(np.float32)


def log_positive_weights(weights: np.ndarray, source: str) -> None:
    logger.info(
        "Weighted loss (use_weighted_loss=1), positive weight per class from %s: %s",
        source,
        json.dumps([round(float(w), 4) for w in weights]),
    )
