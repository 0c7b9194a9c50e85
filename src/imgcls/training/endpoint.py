"""The endpoint-equivalent validation figure: the validation images as the server would see them.

Validation (ImageRecordIter) resizes the shorter side and centre-crops; the served model squashes
the whole image to image_shape (the contract) unless inference_preprocessing=crop. When the two
differ, the accuracy training logs is not the endpoint's: after each validation pass this module
scores the raw bytes of the validation records through data/preprocess.py's `network_pixels`,
the server's own preprocessing, and logs `Epoch[N] Validation-endpoint_accuracy=...`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.config.hyperparameters import Hyperparameters
from imgcls.data.in_memory import fits_in_memory, total_memory
from imgcls.data.labels import label_row
from imgcls.data.loaders import ChannelData
from imgcls.data.preprocess import (
    crop_shorter_side,
    decode_pool,
    image_size,
    network_pixels,
    to_network_pixels,
)
from imgcls.data.recordio import part_count
from imgcls.log import logger
from imgcls.training.loop import Learner
from imgcls.training.metrics import MultiLabelAccuracy

METRIC_NAME = "endpoint_accuracy"
WARN_GAP_POINTS = 2.0


def records(files: list[Path]) -> Iterator[tuple[mx.recordio.IRHeader, bytes]]:
    """(header, image bytes) of every record of `files`, in order."""
    for path in files:
        reader = mx.recordio.MXRecordIO(str(path), "r")
        try:
            while (raw := reader.read()) is not None:
                yield mx.recordio.unpack(raw)
        finally:
            reader.close()


def all_of_shape(files: list[Path], height: int, width: int) -> bool:
    """True when every validation image already is height x width (header reads only)."""
    return all(
        image_size(image, f"validation record id {int(header.id)}") == (height, width)
        for header, image in records(files)
    )


@dataclass
class EndpointCheck:
    """Scores this host's part of the validation records with the serving preprocessing."""

    files: list[Path]
    image_shape: tuple[int, int, int]
    num_classes: int
    multi_label: bool
    batch_size: int
    shorter_side: int | None = None
    num_parts: int = 1
    part_index: int = 0
    warned: bool = False
    keep_inputs: bool = False
    kept: list[tuple[np.ndarray, np.ndarray]] | None = None

    def metric(self) -> mx.metric.EvalMetric:
        kind = MultiLabelAccuracy if self.multi_label else mx.metric.Accuracy
        return kind(name=METRIC_NAME)

    def _batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(uint8 pixels N x C x H x W, labels) of this part's records, `batch_size` at a time;
        a batch's images are decoded and resized on every core (decode_pool)."""
        chunk: list[tuple[str, bytes]] = []
        labels = []
        for index, (header, image) in enumerate(records(self.files)):
            if index % self.num_parts != self.part_index:
                continue
            where = f"validation record {index} (id {int(header.id)})"
            chunk.append((where, image))
            labels.append(label_row(header.label, where, self.num_classes, self.multi_label))
            if len(chunk) == self.batch_size:
                yield self._pixels(chunk), np.stack(labels)
                chunk, labels = [], []
        if chunk:
            yield self._pixels(chunk), np.stack(labels)

    def _pixels(self, chunk: list[tuple[str, bytes]]) -> np.ndarray:
        def served(item: tuple[str, bytes]) -> np.ndarray:
            where, image = item
            return network_pixels(image, self.image_shape, where, self.shorter_side)

        return to_network_pixels(list(decode_pool().map(served, chunk)))

    def _inputs(self) -> Iterable[tuple[np.ndarray, np.ndarray]]:
        """The served inputs, decoded once and kept when `keep_inputs`, else each time."""
        if not self.keep_inputs:
            return self._batches()
        if self.kept is None:
            self.kept = list(self._batches())
        return self.kept

    def evaluate(self, learner: Learner, metric: mx.metric.EvalMetric) -> None:
        """Update `metric` with the network's predictions on the served inputs."""
        metric.reset()
        for pixels, labels in self._inputs():
            outputs = learner.predict(mx.nd.array(pixels, dtype=np.uint8))
            prediction = mx.nd.concat(*[o.as_in_context(mx.cpu()) for o in outputs], dim=0)
            label = labels if self.multi_label else labels[:, 0]
            metric.update([mx.nd.array(label)], [prediction])

    def report(self, epoch: int, endpoint: float, validation: float) -> None:
        """The figure's own line, and once a warning when it trails validation by > 2 points."""
        logger.info("Epoch[%d] Validation-%s=%f", epoch, METRIC_NAME, endpoint)
        gap = 100 * (validation - endpoint)
        if gap <= WARN_GAP_POINTS or self.warned:
            return
        self.warned = True
        logger.warning(
            "The endpoint-equivalent accuracy (%f) trails the validation accuracy (%f) by %.1f "
            "points: %s Fixes: set the hyperparameter inference_preprocessing=crop (the served "
            "model then resizes and crops as validation does), or resize the training and "
            "validation images to image_shape's height x width before training, so that the "
            "endpoint's squash changes nothing.",
            endpoint,
            validation,
            gap,
            self._difference(),
        )

    def _difference(self) -> str:
        if self.shorter_side is None:
            return (
                "the endpoint squashes the whole image to image_shape, while validation resizes "
                "the shorter side and centre-crops."
            )
        return (
            f"the endpoint resizes the shorter side to {self.shorter_side} and centre-crops, "
            "which differs from validation's resize."
        )


def after_validation(
    check: EndpointCheck,
    learner: Learner,
    aggregate: Callable[[mx.metric.EvalMetric], None] | None,
) -> Callable[[int, float], None]:
    """The hook the fit loop calls after each validation pass: score, sum over hosts, log."""
    metric = check.metric()

    def hook(epoch: int, validation_accuracy: float) -> None:
        check.evaluate(learner, metric)
        if aggregate is not None:
            aggregate(metric)
        check.report(epoch, metric.get()[1], validation_accuracy)

    return hook


def served_shorter_side(hp: Hyperparameters, train: ChannelData) -> int | None:
    """With inference_preprocessing=crop, the shorter side the served model resizes to: resize,
    else the training images' smallest shorter side (known for RecordIO in File mode)."""
    if hp.inference_preprocessing != "crop":
        return None
    smallest = min(train.stats.min_height, train.stats.min_width)
    return crop_shorter_side(hp.resize, hp.image_shape, smallest)


def endpoint_check(
    hp: Hyperparameters,
    validation: ChannelData | None,
    shorter_side: int | None,
    parts: tuple[int, int],
) -> EndpointCheck | None:
    """The check when validation's images differ from what the endpoint feeds the network:
    any resize, or any image not already image_shape. Pipe mode streams the validation images
    once per pass, so there are no records to read again: skipped, as the log says. The served
    inputs (uint8, as the network takes them) are decoded once and kept when they fit
    data/in_memory.py's memory bound."""
    if validation is None:
        return None
    if validation.is_pipe:
        logger.info("Validation-%s is not computed in Pipe mode.", METRIC_NAME)
        return None
    if hp.resize is None and all_of_shape(validation.files, hp.height, hp.width):
        return None
    count = part_count(validation.count, *parts)
    return EndpointCheck(
        validation.files,
        hp.image_shape,
        hp.num_classes,
        hp.multi_label,
        hp.mini_batch_size,
        shorter_side,
        *parts,
        keep_inputs=fits_in_memory(count, hp.image_shape, total_memory()),
    )
