"""What happens around the fit loop: LR schedule, loss, metrics, early stopping, checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.log import logger


def lr_scheduler(
    steps: tuple[int, ...], factor: float, base_lr: float, updates_per_epoch: int
) -> mx.lr_scheduler.LRScheduler | None:
    """LR x factor after each step epoch, counted in updates (MXNet counts them from 1)."""
    if not steps:
        return None
    return mx.lr_scheduler.MultiFactorScheduler(
        step=[epoch * updates_per_epoch for epoch in steps], factor=factor, base_lr=base_lr
    )


def updates_per_epoch(num_training_samples: int, global_batch: int) -> int:
    """Iterations per epoch as the built-in algorithm derives them: from num_training_samples."""
    return max(1, math.ceil(num_training_samples / global_batch))


def optimizer_params(hp, lr_schedule: mx.lr_scheduler.LRScheduler | None) -> dict:
    """Each optimizer gets exactly its own hyperparameters."""
    params: dict = {"learning_rate": hp.learning_rate}
    if lr_schedule is not None:
        params["lr_scheduler"] = lr_schedule
    if hp.precision_dtype == "float16":
        params["multi_precision"] = True
    if hp.optimizer in ("sgd", "nag"):
        params.update(momentum=hp.momentum, wd=hp.weight_decay)
    elif hp.optimizer == "adam":
        params.update(beta1=hp.beta_1, beta2=hp.beta_2, epsilon=hp.eps)
    elif hp.optimizer == "rmsprop":
        params.update(gamma1=hp.gamma, epsilon=hp.eps)
    return params


def loss_function(
    multi_label: bool, positive_weights: Callable[[], np.ndarray] | None = None
) -> gluon.loss.Loss:
    """Softmax cross-entropy; multi-label: sigmoid cross-entropy per class, with each class's
    positives weighted by `positive_weights()` when given (use_weighted_loss)."""
    if not multi_label:
        return gluon.loss.SoftmaxCrossEntropyLoss()
    if positive_weights is None:
        return gluon.loss.SigmoidBinaryCrossEntropyLoss()
    return PositiveWeightedSigmoidLoss(positive_weights)


class PositiveWeightedSigmoidLoss(gluon.loss.SigmoidBinaryCrossEntropyLoss):
    """Sigmoid cross-entropy whose positive terms are weighted per class (`pos_weight`)."""

    def __init__(self, positive_weights: Callable[[], np.ndarray]) -> None:
        super().__init__()
        self._positive_weights = positive_weights

    def forward(self, pred: mx.nd.NDArray, label: mx.nd.NDArray) -> mx.nd.NDArray:
        weights = mx.nd.array(self._positive_weights(), ctx=pred.context).reshape((1, -1))
        return super().forward(pred, label, None, weights)


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
        positives, negatives = self.positives[:, ::-1], self.negatives[:, ::-1]
        true_positives = np.cumsum(positives, axis=1)
        predicted = true_positives + np.cumsum(negatives, axis=1)
        precision = true_positives / np.maximum(predicted, 1)
        totals = true_positives[:, -1]
        seen = totals > 0
        if not seen.any():
            return self.name, float("nan")
        average_precision = (positives * precision).sum(axis=1)[seen] / totals[seen]
        return self.name, float(average_precision.mean())


@dataclass
class EarlyStopping:
    """Stop when validation accuracy has not improved (relative tolerance) for `patience` epochs,
    once `min_epochs` epochs have run."""

    min_epochs: int
    patience: int
    tolerance: float
    best: float = -1.0
    epochs_without_improvement: int = 0

    def should_stop(self, epochs_done: int, accuracy: float) -> bool:
        if self._improves(accuracy):
            self.best = accuracy
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return epochs_done >= self.min_epochs and self.epochs_without_improvement >= self.patience

    def _improves(self, accuracy: float) -> bool:
        if accuracy <= self.best:
            return False
        if self.best <= 0:
            return True
        return (accuracy - self.best) / self.best >= self.tolerance

    def state(self) -> dict:
        return asdict(self)


@dataclass
class ModelCheckpoints:
    """The model/ policy: the best validation epoch (older bests removed), every
    `frequency`-th epoch when set, and the last epoch when there is no validation."""

    export: Callable[[int], Path]
    remove: Callable[[int], None]
    frequency: int | None
    enabled: bool = True
    best_accuracy: float = -1.0
    best_epoch: int = 0
    last_epoch: int = 0

    def on_epoch_end(self, epoch: int, accuracy: float | None, is_last: bool) -> None:
        """`epoch` is 1-based, as in the file names."""
        periodic = bool(self.frequency) and epoch % self.frequency == 0
        if accuracy is not None:
            if accuracy > self.best_accuracy:
                logger.info("Storing the best model with validation accuracy: %f", accuracy)
                self._save(epoch)
                self._drop(self.best_epoch)
                self.best_accuracy, self.best_epoch = accuracy, epoch
            elif periodic:
                self._save(epoch)
        elif periodic or is_last:
            self._save(epoch)
            self._drop(self.last_epoch)
            self.last_epoch = epoch

    def _save(self, epoch: int) -> None:
        if self.enabled:
            logger.info('Saved checkpoint to "%s"', self.export(epoch))

    def _drop(self, epoch: int) -> None:
        """Remove an earlier file unless the periodic policy keeps it."""
        if self.enabled and epoch and not (self.frequency and epoch % self.frequency == 0):
            self.remove(epoch)

    def state(self) -> dict:
        return {
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
        }
