"""MXNet RecordIO channels: checking their records, and MXNet's native ImageRecordIter over them."""

from __future__ import annotations

import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np
from PIL import Image, UnidentifiedImageError

from imgcls.data.labels import label_row
from imgcls.errors import ClientError
from imgcls.log import logger

REC_SUFFIXES = (".rec",)


@dataclass
class RecordStats:
    """What a scan of a channel's records found."""

    files: list[Path]
    count: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    min_height: int = 0
    min_width: int = 0


def scan_records(
    files: list[Path],
    *,
    num_classes: int,
    multi_label: bool = False,
    min_size: tuple[int, int] | None = None,
) -> RecordStats:
    """Count the records and check every label and (when `min_size` is set) every image size.

    MXNet's ImageRecordIter silently accepts out-of-range labels and stretches images smaller
    than data_shape, so both are checked here, naming the file and record.
    """
    stats = RecordStats(files=files, class_counts=np.zeros(num_classes, dtype=np.int64))
    heights, widths = [], []
    started = time.perf_counter()
    for path in files:
        for index, header, image in _records(path):
            where = f"{path}, record {index} (id {int(header.id)})"
            labels = label_row(header.label, where, num_classes, multi_label)
            if multi_label:
                stats.class_counts += labels.astype(np.int64)
            else:
                stats.class_counts[int(labels[0])] += 1
            if min_size is not None:
                height, width = _image_size(image, where)
                _check_size(height, width, min_size, where)
                heights.append(height)
                widths.append(width)
            stats.count += 1
    stats.min_height = min(heights, default=0)
    stats.min_width = min(widths, default=0)
    logger.info(
        "Checked %d records in %d file(s) in %.2f s",
        stats.count,
        len(files),
        time.perf_counter() - started,
    )
    return stats


def _records(path: Path):
    """(index, header, image bytes) for every record of one .rec file."""
    reader = mx.recordio.MXRecordIO(str(path), "r")
    try:
        index = 0
        while True:
            try:
                raw = reader.read()
            except mx.base.MXNetError as exc:
                raise ClientError(
                    f"{path} is not a valid MXNet RecordIO file (record {index}): "
                    f"{str(exc).splitlines()[0]}. Pack images with MXNet's tools/im2rec.py."
                ) from None
            if raw is None:
                return
            header, image = mx.recordio.unpack(raw)
            yield index, header, image
            index += 1
    finally:
        reader.close()


def _image_size(image: bytes, where: str) -> tuple[int, int]:
    try:
        width, height = Image.open(io.BytesIO(image)).size
    except (UnidentifiedImageError, OSError) as exc:
        raise ClientError(f"{where}: the image cannot be decoded ({exc}).") from None
    return height, width


def _check_size(height: int, width: int, min_size: tuple[int, int], where: str) -> None:
    if height < min_size[0] or width < min_size[1]:
        raise ClientError(
            f"{where}: image is {height}x{width}, smaller than image_shape's "
            f"{min_size[0]}x{min_size[1]}. Set resize, use a smaller image_shape, or drop it."
        )


def record_iter(
    files: list[Path],
    *,
    image_shape: tuple[int, int, int],
    batch_size: int,
    label_width: int = 1,
    shuffle: bool,
    augment: dict[str, Any],
    num_parts: int = 1,
    part_index: int = 0,
    seed: int = 0,
) -> mx.io.DataIter:
    """MXNet's ImageRecordIter (decode and augmentation on C++ threads) over `files`.

    Pixels stay raw 0-255 RGB (or grey): normalisation lives in the network.
    """
    return mx.io.ImageRecordIter(
        path_imgrec=";".join(str(f) for f in files),
        data_shape=image_shape,
        batch_size=batch_size,
        label_width=label_width,
        shuffle=shuffle,
        round_batch=True,
        num_parts=num_parts,
        part_index=part_index,
        seed=seed,
        **augment,
    )
