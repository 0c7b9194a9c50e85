"""Decode once: a small training channel held in memory, cropped and mirrored batch by batch.

When every record of a File-mode channel has one size and the decoded pixels take at most
MEMORY_FRACTION of the RAM, MXNet's ImageRecordIter decodes the records once (uint8, as they
are), and each epoch then draws the batches from memory with exactly the augmentation
ImageRecordIter would apply: `crop` takes a uniformly random image_shape window (offsets
0..H-h and 0..W-w) and mirrors it with probability 1/2; no augmentation takes the centre
window ((H-h)//2, (W-w)//2). The records come as ImageRecordIter's shuffle gives them: a new
permutation every pass, the last batch of a pass completed from the next. Training then runs
with no decoder threads taking cores from MXNet's OpenMP threads.

The decode runs on a thread of its own from the moment the batches are made: ImageRecordIter
decodes in C++, without the GIL, while the job builds its network, and the first batch waits
for what is left (ResNet-18, 256 images at 224 px: training started 0.79 s after the network
build began, against 1.01 s for the build and then the decode; one job each).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor
from functools import cached_property
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.data.recordio import RecordStats
from imgcls.log import logger

MEMORY_FRACTION = 0.25
IN_MEMORY_AUGMENTATIONS = (None, "crop")
DECODE_BATCH = 256


def total_memory() -> int:
    """Bytes of RAM on this machine."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def stored_shape(stats: RecordStats, channels: int) -> tuple[int, int, int] | None:
    """(channels, height, width) shared by every record of the scan, or None when they differ
    (or the channel holds no record)."""
    if not stats.min_height or (stats.min_height, stats.min_width) != (
        stats.max_height,
        stats.max_width,
    ):
        return None
    return channels, stats.min_height, stats.min_width


def fits_in_memory(count: int, shape: tuple[int, int, int], memory: int) -> bool:
    """True when `count` decoded uint8 images of `shape` take at most MEMORY_FRACTION of
    `memory` bytes."""
    return count * int(np.prod(shape)) <= MEMORY_FRACTION * memory


def decode_records(
    files: list[Path],
    index: Path,
    shape: tuple[int, int, int],
    label_width: int,
    count: int,
    parts: tuple[int, int] = (1, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels N x C x H x W, labels) of this part's `count` records, in record order,
    decoded by ImageRecordIter at their own size (so no resize, no crop). Its last batch is
    padded (its `pad` is 0 when the batch exceeds the records): the first `count` are kept."""
    started = time.perf_counter()
    reader = mx.io.ImageRecordIter(
        path_imgrec=";".join(str(f) for f in files),
        path_imgidx=str(index),
        data_shape=shape,
        batch_size=min(DECODE_BATCH, count),
        label_width=label_width,
        shuffle=False,
        round_batch=False,
        num_parts=parts[0],
        part_index=parts[1],
        dtype="uint8",
    )
    pixels, labels = [], []
    for batch in reader:
        pixels.append(batch.data[0].asnumpy())
        labels.append(batch.label[0].asnumpy())
    data = np.concatenate(pixels)[:count]
    logger.info(
        "Decoded %d training images once into memory (%.1f MB) in %.2f s",
        len(data),
        data.nbytes / 1e6,
        time.perf_counter() - started,
    )
    return data, np.concatenate(labels)[:count]


def decode_in_background(*args, **kwargs) -> Future[tuple[np.ndarray, np.ndarray]]:
    """`decode_records(*args, **kwargs)`, started now on a thread of its own."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgcls-decode")
    try:
        return pool.submit(decode_records, *args, **kwargs)
    finally:
        pool.shutdown(wait=False)


class InMemoryBatches(mx.io.DataIter):
    """`batches` uint8 batches per epoch (reset() starts the next epoch) from decoded images,
    `decoded` (pixels N x C x H x W, labels): the first batch waits for it."""

    def __init__(
        self,
        decoded: Future[tuple[np.ndarray, np.ndarray]],
        channels: int,
        label_width: int,
        *,
        batch_size: int,
        batches: int,
        crop: tuple[int, int],
        random_crop: bool,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size)
        self.decoded = decoded
        self.batches, self.crop, self.random_crop = batches, crop, random_crop
        self.rng = np.random.default_rng(seed)
        self.stream = np.zeros(0, dtype=np.int64)
        self.served = 0
        labels = (batch_size, label_width) if label_width > 1 else (batch_size,)
        self.provide_data = [mx.io.DataDesc("data", (batch_size, channels, *crop), np.uint8)]
        self.provide_label = [mx.io.DataDesc("softmax_label", labels)]

    @cached_property
    def pixels(self) -> np.ndarray:
        return self.decoded.result()[0]

    @cached_property
    def labels(self) -> np.ndarray:
        return self.decoded.result()[1]

    def reset(self) -> None:
        self.served = 0

    def skip_epochs(self, epochs: int) -> None:
        """Draw what `epochs` epochs draw, computing no batch: a resumed job then augments its
        next epochs exactly as the job it continues would have."""
        for _ in range(epochs * self.batches):
            self._draw_windows(self._next_records().size)

    def next(self) -> mx.io.DataBatch:
        if self.served == self.batches:
            raise StopIteration
        self.served += 1
        chosen = self._next_records()
        data = mx.nd.array(self._windows(chosen), dtype=np.uint8)
        label = mx.nd.array(self.labels[chosen])
        return mx.io.DataBatch([data], [label], pad=0)

    def _next_records(self) -> np.ndarray:
        """The next batch_size records of the stream of passes (a new permutation each)."""
        while self.stream.size < self.batch_size:
            order = self.rng.permutation(len(self.pixels))
            self.stream = np.concatenate([self.stream, order])
        chosen, self.stream = self.stream[: self.batch_size], self.stream[self.batch_size :]
        return chosen

    def _windows(self, chosen: np.ndarray) -> np.ndarray:
        """One crop window per chosen image (mirrored at random with `random_crop`), gathered
        for the whole batch at once from a view of every window of every image."""
        top, left, mirror = self._draw_windows(chosen.size)
        windows = np.lib.stride_tricks.sliding_window_view(self.pixels, self.crop, axis=(2, 3))
        batch = windows[chosen, :, top, left]  # N x C x h x w
        batch[mirror] = batch[mirror, :, :, ::-1]
        return batch

    def _draw_windows(self, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(top, left, mirrored) of `count` windows: random with `random_crop`, else centred."""
        height, width = self.pixels.shape[2:]
        h, w = self.crop
        if self.random_crop:
            top = self.rng.integers(0, height - h + 1, count)
            left = self.rng.integers(0, width - w + 1, count)
            mirror = self.rng.integers(0, 2, count).astype(bool)
        else:
            top = np.full(count, (height - h) // 2)
            left = np.full(count, (width - w) // 2)
            mirror = np.zeros(count, dtype=bool)
        return top, left, mirror
