"""The kept model's validation counts: a confusion matrix (single-label) or per-class
TP/FP/FN/TN at 0.5 and average precision (multi-label), and the scores derived from them."""

from __future__ import annotations

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.training.metrics import MeanAveragePrecision, average_precisions


class ValidationCounts(mx.metric.EvalMetric):
    """Counts of one validation pass, updated with the logged metrics' (labels, logits).

    `sum_metric` / `num_inst` is the mean validation loss; `counters()` holds every count so
    that hosts sum them (distributed.worker.aggregate_metrics), as they sum the metrics.
    """

    def __init__(self, num_classes: int, multi_label: bool, loss_fn: gluon.loss.Loss) -> None:
        self.num_classes = num_classes
        self.multi_label = multi_label
        self.loss_fn = loss_fn
        self.ranking = MeanAveragePrecision(num_classes) if multi_label else None
        super().__init__("loss")

    def reset(self) -> None:
        super().reset()
        width = 4 if self.multi_label else self.num_classes
        self.counts = np.zeros((self.num_classes, width), dtype=np.int64)
        if self.ranking is not None:
            self.ranking.reset()

    def update(self, labels: list[mx.nd.NDArray], preds: list[mx.nd.NDArray]) -> None:
        for label, pred in zip(labels, preds, strict=True):
            self.sum_metric += float(self.loss_fn(pred, label).sum().asscalar())
            self.num_inst += pred.shape[0]
            truth, logits = label.asnumpy(), pred.asnumpy()
            if self.multi_label:
                self.counts += outcome_counts(truth > 0.5, logits > 0)
            else:
                true, predicted = truth.reshape(-1).astype(np.int64), logits.argmax(axis=1)
                np.add.at(self.counts, (true, predicted), 1)
        if self.ranking is not None:
            self.ranking.update(labels, preds)

    def counters(self) -> np.ndarray:
        extra = self.ranking.counters() if self.ranking is not None else np.zeros(0, np.int64)
        return np.concatenate([self.counts.ravel(), extra])

    def set_counters(self, counters: np.ndarray) -> None:
        counters = np.asarray(counters, dtype=np.int64)
        self.counts = counters[: self.counts.size].reshape(self.counts.shape)
        if self.ranking is not None:
            self.ranking.set_counters(counters[self.counts.size :])

    def snapshot(self) -> dict:
        """This pass's counts as plain lists: the confusion matrix (rows true, columns
        predicted), or per-class [TP, FP, FN, TN] and average precision."""
        if not self.multi_label:
            return {"confusion_matrix": self.counts.tolist()}
        precision = average_precisions(self.ranking.positives, self.ranking.negatives)
        return {
            "outcomes": self.counts.tolist(),
            "average_precision": [None if np.isnan(v) else float(v) for v in precision],
        }


def outcome_counts(truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """(classes, 4) counts of TP, FP, FN, TN from (examples, classes) booleans."""
    return np.stack(
        [
            (truth & predicted).sum(axis=0),
            (~truth & predicted).sum(axis=0),
            (truth & ~predicted).sum(axis=0),
            (~truth & ~predicted).sum(axis=0),
        ],
        axis=1,
    )


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (as scikit-learn's zero_division)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def scores(true_positives, false_positives, false_negatives) -> dict[str, list[float]]:
    """Per-class precision, recall and F1 (0 where undefined)."""
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = _ratio(2 * precision * recall, precision + recall)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist()}


def per_class(snapshot: dict, names: list[str]) -> list[dict]:
    """One row per class: name, support, precision, recall, F1 (and the multi-label counts
    and average precision)."""
    if "confusion_matrix" in snapshot:
        matrix = np.asarray(snapshot["confusion_matrix"])
        true_positives = np.diag(matrix)
        found = scores(
            true_positives, matrix.sum(axis=0) - true_positives, matrix.sum(axis=1) - true_positives
        )
        extra = {"support": matrix.sum(axis=1).tolist()}
    else:
        outcomes = np.asarray(snapshot["outcomes"])
        tp, fp, fn, tn = outcomes.T
        found = scores(tp, fp, fn)
        extra = {
            "support": (tp + fn).tolist(),
            "tp": tp.tolist(),
            "fp": fp.tolist(),
            "fn": fn.tolist(),
            "tn": tn.tolist(),
            "average_precision": snapshot["average_precision"],
        }
    columns = {**extra, **found}
    return [
        {"class": name, "index": i, **{key: values[i] for key, values in columns.items()}}
        for i, name in enumerate(names)
    ]
