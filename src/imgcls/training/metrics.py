"""The metrics training logs: accuracy, top-k accuracy; multi-label accuracy and mAP."""

from __future__ import annotations

import mxnet as mx
import numpy as np


def classification_metrics(
    top_k: int | None, multi_label: bool = False, num_classes: int = 0
) -> mx.metric.CompositeEvalMetric:
    """`accuracy`, plus `top_k_accuracy_<k>` when top_k is set: the names the logs carry.

    Multi-label: `accuracy` is the mean per-class accuracy, then `mean_average_precision`;
    top_k does not apply.
    """
    metrics = mx.metric.CompositeEvalMetric()
    if multi_label:
        metrics.add(MultiLabelAccuracy())
        metrics.add(MeanAveragePrecision(num_classes))
        return metrics
    metrics.add(mx.metric.Accuracy())
    if top_k:
        metrics.add(mx.metric.TopKAccuracy(top_k=top_k))
    return metrics


class MultiLabelAccuracy(mx.metric.Accuracy):
    """Mean per-class accuracy of multi-label logits (a class is predicted when its sigmoid
    exceeds 0.5). Every class is scored on every example, so it is the accuracy over all
    (example, class) pairs."""

    def update(self, labels: list[mx.nd.NDArray], preds: list[mx.nd.NDArray]) -> None:
        super().update(labels, [pred > 0 for pred in preds])


class MeanAveragePrecision(mx.metric.EvalMetric):
    """Mean over classes (those with positives) of the average precision of multi-label logits.

    Memory stays bounded: sigmoid scores are counted in `bins` equal bins per class, and
    examples in one bin are ties (as equal scores are in scikit-learn's average_precision).
    """

    def __init__(
        self, num_classes: int, bins: int = 1000, name: str = "mean_average_precision"
    ) -> None:
        self.num_classes = num_classes
        self.bins = bins
        super().__init__(name)

    def reset(self) -> None:
        super().reset()
        self.positives = np.zeros((self.num_classes, self.bins), dtype=np.int64)
        self.negatives = np.zeros_like(self.positives)

    def counters(self) -> np.ndarray:
        """Every count this metric holds, so that hosts can sum them (see distributed)."""
        return np.concatenate([self.positives.ravel(), self.negatives.ravel()])

    def set_counters(self, counters: np.ndarray) -> None:
        positives, negatives = np.split(np.asarray(counters, dtype=np.int64), 2)
        self.positives = positives.reshape(self.positives.shape)
        self.negatives = negatives.reshape(self.negatives.shape)

    def update(self, labels: list[mx.nd.NDArray], preds: list[mx.nd.NDArray]) -> None:
        for label, pred in zip(labels, preds, strict=True):
            truth = label.asnumpy() > 0.5
            scores = 0.5 * (1 + np.tanh(pred.asnumpy().astype(np.float64) / 2))
            bins = np.minimum((scores * self.bins).astype(np.int64), self.bins - 1)
            classes = np.broadcast_to(np.arange(truth.shape[1]), truth.shape)
            np.add.at(self.positives, (classes[truth], bins[truth]), 1)
            np.add.at(self.negatives, (classes[~truth], bins[~truth]), 1)
            self.num_inst += truth.shape[0]

    def get(self) -> tuple[str, float]:
        average_precision = average_precisions(self.positives, self.negatives)
        seen = ~np.isnan(average_precision)
        if not seen.any():
            return self.name, float("nan")
        return self.name, float(average_precision[seen].mean())


def average_precisions(positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Per-class average precision from (classes, bins) score histograms (NaN for a class
    without positives): precision summed at each positive, highest scores first, a bin's
    examples counted as ties."""
    positives, negatives = positives[:, ::-1], negatives[:, ::-1]
    true_positives = np.cumsum(positives, axis=1)
    predicted = true_positives + np.cumsum(negatives, axis=1)
    precision = true_positives / np.maximum(predicted, 1)
    totals = true_positives[:, -1]
    summed = (positives * precision).sum(axis=1)
    return np.divide(summed, totals, out=np.full(len(totals), np.nan), where=totals > 0)
