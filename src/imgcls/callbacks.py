"""What happens around the fit loop: LR schedule, metrics, early stopping, model checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mxnet as mx

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


def classification_metrics(top_k: int | None) -> mx.metric.CompositeEvalMetric:
    """`accuracy`, plus `top_k_accuracy_<k>` when top_k is set: the names the logs carry."""
    metrics = mx.metric.CompositeEvalMetric()
    metrics.add(mx.metric.Accuracy())
    if top_k:
        metrics.add(mx.metric.TopKAccuracy(top_k=top_k))
    return metrics


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
        logger.info('Saved checkpoint to "%s"', self.export(epoch))

    def _drop(self, epoch: int) -> None:
        """Remove an earlier file unless the periodic policy keeps it."""
        if epoch and not (self.frequency and epoch % self.frequency == 0):
            self.remove(epoch)

    def state(self) -> dict:
        return {
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
        }
