"""The fit loop: epochs of batches, metrics and their log lines. Read it top to bottom."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import mxnet as mx
from mxnet import autograd, gluon

from imgcls.errors import TrainingInterrupted
from imgcls.log import logger

PROGRESS_EVERY_SECONDS = 30.0


class StopRequest:
    """Turns SIGTERM (SageMaker's stop, or a spot interruption) into a flag the loop checks."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)

    def _on_signal(self, signum: int, frame: object) -> None:
        logger.warning("SIGTERM received: stopping after the current batch.")
        self.requested = True


# Pixels per inference call: 16 images at 224 x 224 (fewer, larger ones; more, smaller ones).
INFERENCE_PIXELS = 16 * 224 * 224


def inference_images(image_size: tuple[int, int]) -> int:
    """Images per call of the inference graph, whose memory grows with the batch: on this
    2-core VM, first touching fresh memory has cost up to ~2 ms per MB. A ResNet-18 at 224 px
    and batch 32: the first validation call 1.14 s (237 MB) against 0.79-0.85 s in calls of 16
    at such a moment, 0.56-0.60 s either way at others; later passes 0.46-0.54 s either way, and
    the same outputs bit for bit here (oneDNN may pick other kernels for other batch sizes, which
    can move the last bits). 112 px and smaller: 64 images a call and more."""
    height, width = image_size
    return max(1, INFERENCE_PIXELS // (height * width))


@dataclass
class Learner:
    """What a step needs: the network, its trainer and loss, the devices and the precision.

    `hosts_per_update`: how many hosts' batches one update sums (dist_sync: every host's).
    """

    net: gluon.HybridBlock
    trainer: gluon.Trainer
    loss_fn: gluon.loss.Loss
    contexts: list[mx.Context]
    dtype: str = "float32"
    hosts_per_update: int = 1
    targets: Callable[[mx.nd.NDArray, mx.nd.NDArray], tuple] | None = None

    def split(self, array: mx.nd.NDArray) -> list[mx.nd.NDArray]:
        """One slice of the batch per device (mini_batch_size / devices each)."""
        return gluon.utils.split_and_load(array, self.contexts, even_split=False)

    def forward(self, data: mx.nd.NDArray) -> list[mx.nd.NDArray]:
        """Float32 outputs per device slice; the input (uint8 from the training iterators) is
        cast to the network's dtype after the split, on each device (no copy when it already
        has that dtype)."""
        return [
            self.net(x.astype(self.dtype, copy=False)).astype("float32", copy=False)
            for x in self.split(data)
        ]

    def predict(self, data: mx.nd.NDArray) -> list[mx.nd.NDArray]:
        """`forward` in inference mode through `inference_net`: the batch may have any size, so
        a last, short batch is computed as it is, not padded to the training batch's shape (a
        batch with fewer images than devices leaves some idle). Each device's slice goes
        through in calls of at most `inference_images` images."""
        devices = self.contexts[: max(1, data.shape[0])]
        step = inference_images(data.shape[-2:])
        return [
            mx.nd.concat(*[self._infer(x[i : i + step]) for i in range(0, len(x), step)], dim=0)
            for x in gluon.utils.split_and_load(data, devices, even_split=False)
        ]

    def _infer(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        return self.inference_net(x.astype(self.dtype, copy=False)).astype("float32", copy=False)

    @cached_property
    def inference_net(self) -> gluon.SymbolBlock:
        """The network's graph a second time, over the same Parameters (so always the current
        weights): the training graph is static, one batch shape (session.build_learner)."""
        data = mx.sym.var("data", dtype=self.dtype)  # typed: SymbolBlock infers every type
        block = gluon.SymbolBlock(self.net(data), data, params=self.net.collect_params())
        block.hybridize(static_alloc=True)
        return block


@dataclass
class EpochStats:
    samples: int = 0
    seconds: float = 0.0
    metrics: list[tuple[str, float]] = field(default_factory=list)
    loss: mx.metric.Loss = field(default_factory=mx.metric.Loss)

    @property
    def speed(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def train_step(
    learner: Learner, data: mx.nd.NDArray, label: mx.nd.NDArray
) -> tuple[list, list, list]:
    """Forward and backward on every device, then one optimizer update of the whole batch.

    The gradients are normalised by the samples the update sums: with dist_sync the servers
    add every host's gradients, so that is this batch times the number of hosts (as MXNet's
    Module does); the first step's value goes to the servers with the optimizer. With soft
    targets (mixup, label smoothing) the loss sees those; the labels returned for the metrics
    stay the hard ones. Returns (labels, outputs, losses), one of each per device.
    """
    labels = learner.split(label)
    inputs, targets = data, label
    if learner.targets:  # mixing needs float pixels
        inputs, targets = learner.targets(data.astype("float32", copy=False), label)
    with autograd.record():
        outputs = learner.forward(inputs)
        parts = zip(outputs, learner.split(targets), strict=True)
        losses = [learner.loss_fn(o, y) for o, y in parts]
    autograd.backward(losses)
    learner.trainer.step(data.shape[0] * learner.hosts_per_update)
    return labels, outputs, losses


def train_one_epoch(
    epoch: int,
    learner: Learner,
    batches: mx.io.DataIter,
    metrics: mx.metric.EvalMetric,
    stop: StopRequest,
) -> EpochStats:
    """One pass of `batches`; logs progress at most every PROGRESS_EVERY_SECONDS.

    Metrics (and the mean loss, `stats.loss`) read each batch's outputs one step late, once
    the next step is queued, so that reading them (a host synchronisation) never leaves MXNet's
    engine idle. The clock closes when the engine has finished the epoch's last update.
    """
    metrics.reset()
    batches.reset()
    stats = EpochStats()
    pending: tuple[list, list, list] | None = None
    started = last_log = time.perf_counter()
    for index, batch in enumerate(batches):
        step = train_step(learner, batch.data[0], batch.label[0])
        if pending is not None:
            _update(metrics, stats.loss, pending)
        pending = step
        stats.samples += batch.data[0].shape[0]
        if stop.requested:
            raise TrainingInterrupted(epoch)
        now = time.perf_counter()
        if now - last_log >= PROGRESS_EVERY_SECONDS:
            _log_progress(epoch, index, stats.samples / (now - started), metrics)
            last_log = now
    if pending is not None:
        _update(metrics, stats.loss, pending)
    mx.nd.waitall()
    stats.seconds = time.perf_counter() - started
    stats.metrics = metrics.get_name_value()
    return stats


def _update(
    metrics: mx.metric.EvalMetric, loss: mx.metric.Loss, step: tuple[list, list, list]
) -> None:
    labels, outputs, losses = step
    metrics.update(labels, outputs)
    loss.update(None, losses)


def _log_progress(epoch: int, index: int, speed: float, metrics: mx.metric.EvalMetric) -> None:
    values = " ".join(f"{name}={value:f}" for name, value in metrics.get_name_value())
    logger.info("Epoch[%d] Batch [%d] Speed: %.2f samples/sec %s", epoch, index, speed, values)


def evaluate(
    learner: Learner,
    batches: mx.io.DataIter,
    metrics: mx.metric.EvalMetric,
    counts: mx.metric.EvalMetric | None = None,
) -> list[tuple[str, float]]:
    """Metrics over every sample of `batches` exactly once (padding dropped); `counts`, when
    given, is updated in the same pass (it is not logged)."""
    observers = [metrics] if counts is None else [metrics, counts]
    for observer in observers:
        observer.reset()
    for batch in batches:
        valid = batch.data[0].shape[0] - batch.pad
        outputs = [o.as_in_context(mx.cpu()) for o in learner.predict(batch.data[0][:valid])]
        prediction = mx.nd.concat(*outputs, dim=0)
        for observer in observers:
            observer.update([batch.label[0][:valid]], [prediction])
    return metrics.get_name_value()


def log_epoch(epoch: int, stats: EpochStats) -> None:
    """The contract's lines: Train-<metric>=, Time cost=, and a throughput line."""
    for name, value in stats.metrics:
        logger.info("Epoch[%d] Train-%s=%f", epoch, name, value)
    logger.info("Epoch[%d] Time cost=%.3f", epoch, stats.seconds)
    logger.info("Epoch[%d] Speed: %.2f samples/sec", epoch, stats.speed)


def log_local(epoch: int, kind: str, values: list[tuple[str, float]]) -> None:
    """This host's own figures in a multi-host job (not the shape tuning jobs parse)."""
    for name, value in values:
        logger.info("Epoch[%d] This host's %s-%s=%f", epoch, kind, name, value)


def log_validation(epoch: int, values: list[tuple[str, float]]) -> None:
    for name, value in values:
        logger.info("Epoch[%d] Validation-%s=%f", epoch, name, value)


@dataclass
class EpochHooks:
    """What the job does between epochs; `after_epoch` returns True to stop early;
    `after_validation` gets each epoch's validation accuracy; `validation_counts` is updated
    by each validation pass (summed over hosts); `record` gets each epoch's figures (its
    training stats and validation metrics) before `after_epoch`; `after_training` runs when
    the epoch's training is done, before validation."""

    validation_batches: Callable[[], mx.io.DataIter] | None
    after_epoch: Callable[[int, float | None], bool]
    aggregate: Callable[[mx.metric.EvalMetric], None] | None = None
    after_validation: Callable[[int, float], None] | None = None
    validation_counts: mx.metric.EvalMetric | None = None
    record: Callable[[int, EpochStats, list[tuple[str, float]] | None], None] | None = None
    after_training: Callable[[], None] | None = None


def fit(
    learner: Learner,
    train_batches: mx.io.DataIter,
    metrics_factory: Callable[[], mx.metric.EvalMetric],
    hooks: EpochHooks,
    epochs: range,
    stop: StopRequest,
) -> None:
    """Train for `epochs` (0-based numbers), validating after each one."""
    train_metrics, validation_metrics = metrics_factory(), metrics_factory()
    for epoch in epochs:
        if stop.requested:
            raise TrainingInterrupted(epoch)
        stats = train_one_epoch(epoch, learner, train_batches, train_metrics, stop)
        if hooks.aggregate is not None:
            log_local(epoch, "train", stats.metrics)
            hooks.aggregate(train_metrics)
            hooks.aggregate(stats.loss)
            stats.metrics = train_metrics.get_name_value()
        log_epoch(epoch, stats)
        if hooks.after_training is not None:
            hooks.after_training()
        accuracy, values = None, None
        if hooks.validation_batches is not None:
            counts = hooks.validation_counts
            values = evaluate(learner, hooks.validation_batches(), validation_metrics, counts)
            if hooks.aggregate is not None:
                log_local(epoch, "validation", values)
                hooks.aggregate(validation_metrics)
                if counts is not None:
                    hooks.aggregate(counts)
                values = validation_metrics.get_name_value()
            log_validation(epoch, values)
            accuracy = dict(values)["accuracy"]
            if hooks.after_validation is not None:
                hooks.after_validation(epoch, accuracy)
        if hooks.record is not None:
            hooks.record(epoch, stats, values)
        if hooks.after_epoch(epoch, accuracy):
            return
