"""Pipe mode's batches: examples from a PipeSource, shuffled, decoded and augmented.

Memory stays bounded: a thread reads the FIFO into a shuffle buffer of SHUFFLE_BUFFER examples
(training only), decodes and augments batch after batch on a small thread pool, and queues at
most PREFETCH_BATCHES ready batches. Nothing is written to disk; nothing outlives its batch.

The buffer shuffles only locally: each example leaves it at most SHUFFLE_BUFFER places before
its place in the stream, and on average about where it was (its wait is geometric with mean
SHUFFLE_BUFFER). A stream in label order stays nearly in label order; shuffle the records
before streaming them (im2rec.py does by default), or use File mode.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from imgcls.data.labels import log_positive_weights
from imgcls.data.pipe.examples import Example
from imgcls.data.pipe.fifo import PipeSource
from imgcls.data.pipe.image_aug_default import augment_image
from imgcls.data.preprocess import ImageTooLarge, decode_image, decode_pool, to_network_input
from imgcls.errors import ClientError
from imgcls.log import logger

SHUFFLE_BUFFER = 512
PREFETCH_BATCHES = 2
PUT_POLL_SECONDS = 0.2


@dataclass
class _End:
    """The producer's last word for an epoch."""

    count: int
    seconds: float


class PipeBatches(mx.io.DataIter):
    """Batches streamed from a PipeSource; each reset() (and the first next()) opens the next FIFO.

    The number of batches per epoch is what the pipe delivers; the last batch is completed with
    repeats of its own examples and says how many in `pad`.
    """

    def __init__(
        self,
        source: PipeSource,
        *,
        batch_size: int,
        image_shape: tuple[int, int, int],
        augment: dict[str, Any],
        shuffle: bool,
        min_count: int = 0,
        expected_count: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size)
        self.source = source
        self.image_shape = image_shape
        self.augment = augment
        self.shuffle = shuffle
        self.min_count = min_count
        self.expected_count = expected_count
        self.rng = np.random.default_rng(seed)
        label_shape = (batch_size, source.num_classes) if source.multi_label else (batch_size,)
        self.provide_data = [mx.io.DataDesc("data", (batch_size, *image_shape))]
        self.provide_label = [mx.io.DataDesc("softmax_label", label_shape)]
        self._stream: _EpochStream | None = None
        if shuffle:
            logger.info(
                "Pipe mode: channel %r is shuffled within a buffer of %d examples only (each "
                "comes out at most %d places early, and about where it was on average): stream "
                "shuffled records.",
                source.name,
                SHUFFLE_BUFFER,
                SHUFFLE_BUFFER,
            )

    def reset(self) -> None:
        if self._stream is not None:
            self._stream.stop()
        epoch = self.source.next_epoch()
        self._stream = _EpochStream(self, epoch, int(self.rng.integers(2**32)))

    def next(self) -> mx.io.DataBatch:
        if self._stream is None:
            self.reset()
        if self._stream.finished:
            raise StopIteration
        item = self._stream.get()
        if isinstance(item, _End):
            self._end_of_epoch(self._stream.epoch, item)
            raise StopIteration
        data, label, pad = item
        return mx.io.DataBatch(
            data=[mx.nd.array(data)],
            label=[mx.nd.array(label)],
            pad=pad,
            provide_data=self.provide_data,
            provide_label=self.provide_label,
        )

    def _end_of_epoch(self, epoch: int, end: _End) -> None:
        path = self.source.fifo(epoch)
        if end.count == 0:
            raise ClientError(
                f"Pipe mode: {path} delivered no record (channel {self.source.name!r}, epoch "
                f"{epoch}). Check the channel's S3 data (S3Uri, manifest) is not empty."
            )
        logger.info(
            "Pipe %s: %d examples in %.2f s (%.0f examples/s)",
            path,
            end.count,
            end.seconds,
            end.count / max(end.seconds, 1e-9),
        )
        if epoch == 0:
            self._check_first_pass(path, end.count)

    def _check_first_pass(self, path: Path, count: int) -> None:
        if count < self.min_count:
            raise ClientError(
                f"Pipe mode: {path} delivered {count} examples, fewer than mini_batch_size="
                f"{self.min_count}. Add images or lower mini_batch_size."
            )
        if self.expected_count is not None and count != self.expected_count:
            logger.warning(
                "num_training_samples=%d but the train channel's pipe delivered %d examples: the "
                "learning-rate schedule follows num_training_samples. Set it to %d to silence "
                "this warning.",
                self.expected_count,
                count,
                count,
            )
        if self.source.log_weights:
            log_positive_weights(self.source.positive_weights(), f"the first pass of {path}")

    def transform(self, example: Example, seed: int) -> np.ndarray:
        """Decode, then augment (or centre-crop) one example, as ImageRecordIter would."""
        channels, height, width = self.image_shape
        try:
            image = decode_image(example.image, channels, example.where)
        except ImageTooLarge:
            raise
        except ClientError:
            raise ClientError(
                f"{example.where}: the image cannot be decoded (empty, truncated or not an "
                f"image). {self.source.decode_hint}"
            ) from None
        rng = np.random.default_rng(seed)
        return augment_image(image, self.augment, (height, width), rng, example.where)


class _EpochStream:
    """One epoch of a PipeBatches: a producer thread and the bounded queue of its batches."""

    def __init__(self, batches: PipeBatches, epoch: int, seed: int) -> None:
        self.batches = batches
        self.epoch = epoch
        self.rng = np.random.default_rng(seed)
        self.queue: queue.Queue = queue.Queue(PREFETCH_BATCHES)
        self.stopped = threading.Event()
        self.finished = False
        name = f"imgcls-pipe-{batches.source.name}-{epoch}"
        threading.Thread(target=self._produce, name=name, daemon=True).start()

    def get(self) -> Any:
        """The next batch, or _End once the epoch is over; raises the producer's errors."""
        item = self.queue.get()
        if isinstance(item, BaseException):
            self.finished = True
            raise item
        self.finished = isinstance(item, _End)
        return item

    def stop(self) -> None:
        self.stopped.set()

    def _produce(self) -> None:
        started = time.perf_counter()
        try:
            count = 0
            for chunk in self._chunks():
                count += len(chunk)
                self._put(self._batch(chunk))
            self._put(_End(count, time.perf_counter() - started))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put(exc)

    def _put(self, item: Any) -> None:
        while not self.stopped.is_set():
            try:
                self.queue.put(item, timeout=PUT_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def _chunks(self) -> Iterator[list[Example]]:
        examples = self.batches.source.examples(self.epoch)
        if self.batches.shuffle:
            examples = _shuffled(examples, SHUFFLE_BUFFER, self.rng)
        chunk: list[Example] = []
        for example in examples:
            if self.stopped.is_set():
                return
            chunk.append(example)
            if len(chunk) == self.batches.batch_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def _batch(self, chunk: list[Example]) -> tuple[np.ndarray, np.ndarray, int]:
        seeds = self.rng.integers(2**32, size=len(chunk))
        images = list(decode_pool().map(self.batches.transform, chunk, seeds))
        size = self.batches.batch_size
        rows = [i % len(chunk) for i in range(size)]
        labels = np.stack([chunk[i].label for i in rows])
        if not self.batches.source.multi_label:
            labels = labels[:, 0]
        return to_network_input([images[i] for i in rows]), labels, size - len(chunk)


def _shuffled(
    examples: Iterator[Example], capacity: int, rng: np.random.Generator
) -> Iterator[Example]:
    """A bounded shuffle: each example waits in a buffer of `capacity` for a random turn."""
    buffer: list[Example] = []
    for example in examples:
        if len(buffer) < capacity:
            buffer.append(example)
            continue
        index = int(rng.integers(capacity))
        yield buffer[index]
        buffer[index] = example
    for index in rng.permutation(len(buffer)):
        yield buffer[index]
