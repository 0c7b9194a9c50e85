"""MXNet RecordIO channels: checking their records, indexing them, and MXNet's native
ImageRecordIter over them.

The index (`key\toffset` lines, as MXIndexedRecordIO and im2rec.py write them) is what lets
ImageRecordIter shuffle the whole channel every pass; without one it shuffles only within the
64 MB chunks it reads in file order. One index covers all of a channel's files: dmlc's indexed
reader counts offsets across its files as if they were one (it takes a single index file).
"""

from __future__ import annotations

import ctypes
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mxnet as mx
import numpy as np

from imgcls.data.labels import label_row
from imgcls.data.preprocess import image_size
from imgcls.errors import ClientError
from imgcls.log import logger

REC_SUFFIXES = (".rec",)
REPACK_THE_RECORD = (
    "pack it from a JPEG or PNG file again (mxnet/tools/im2rec.py, or imgcls prepare), or "
    "leave it out of the channel."
)


@dataclass
class RecordStats:
    """What a scan of a channel's records found."""

    files: list[Path]
    count: int = 0
    class_counts: np.ndarray = field(default_factory=lambda: np.zeros(0))
    min_height: int = 0
    min_width: int = 0
    max_height: int = 0
    max_width: int = 0
    offsets: list[np.ndarray] = field(default_factory=list)


def scan_records(
    files: list[Path],
    *,
    num_classes: int,
    multi_label: bool = False,
    min_size: tuple[int, int] | None = None,
) -> RecordStats:
    """Count the records; check every label, every image's header and (when `min_size` is
    set) every image's size.

    MXNet's ImageRecordIter silently accepts out-of-range labels and stretches images smaller
    than data_shape, and a record that is not an image kills its process (SIGFPE), with or
    without resize: all are checked here, naming the file and record.
    """
    stats = RecordStats(files=files, class_counts=np.zeros(num_classes, dtype=np.int64))
    heights, widths = [], []
    started = time.perf_counter()
    for path in files:
        offsets = []
        for index, offset, header, image in _records(path):
            offsets.append(offset)
            where = f"{path}, record {index} (id {int(header.id)})"
            labels = label_row(header.label, where, num_classes, multi_label)
            if multi_label:
                stats.class_counts += labels.astype(np.int64)
            else:
                stats.class_counts[int(labels[0])] += 1
            height, width = image_size(image, where, REPACK_THE_RECORD)
            if min_size is not None:
                _check_size(height, width, min_size, where)
            heights.append(height)
            widths.append(width)
            stats.count += 1
        stats.offsets.append(np.asarray(offsets, dtype=np.int64))
    stats.min_height = min(heights, default=0)
    stats.min_width = min(widths, default=0)
    stats.max_height = max(heights, default=0)
    stats.max_width = max(widths, default=0)
    logger.info(
        "Checked %d records in %d file(s) in %.2f s",
        stats.count,
        len(files),
        time.perf_counter() - started,
    )
    return stats


def _records(path: Path):
    """(index, byte offset, header, image bytes) for every record of one .rec file."""
    reader = mx.recordio.MXRecordIO(str(path), "r")
    try:
        index = 0
        while True:
            offset = _tell(reader)
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
            yield index, offset, header, image
            index += 1
    finally:
        reader.close()


def _tell(reader: mx.recordio.MXRecordIO) -> int:
    """The reader's byte position (MXNet's Python class offers tell() to writers only)."""
    position = ctypes.c_size_t()
    mx.base.check_call(mx.base._LIB.MXRecordIOReaderTell(reader.handle, ctypes.byref(position)))
    return position.value


def record_index(stats: RecordStats, out: Path) -> Path:
    """An index of every record the scan found: the channel's own .idx when it has a single
    .rec and that .idx lists exactly its records, else one written to `out` (a temporary
    folder: the input folder is never written to)."""
    own = _matching_idx(stats)
    if own is not None:
        logger.info("Using the index %s", own)
        return own
    starts = np.cumsum([0] + [path.stat().st_size for path in stats.files[:-1]])
    offsets = np.concatenate([o + start for o, start in zip(stats.offsets, starts, strict=True)])
    keys = np.arange(offsets.size)
    np.savetxt(out, np.column_stack([keys, offsets]), fmt="%d", delimiter="\t")
    logger.info("Indexed %d records of %d file(s) in %s", offsets.size, len(stats.files), out)
    return out


def _matching_idx(stats: RecordStats) -> Path | None:
    """`name.idx` beside a channel's only `name.rec`, when its offsets are the records' own."""
    if len(stats.files) != 1:
        return None
    idx = stats.files[0].with_suffix(".idx")
    if not idx.is_file():
        return None
    try:
        table = np.loadtxt(idx, dtype=np.int64, delimiter="\t", ndmin=2)
        matches = table.shape[1] == 2 and np.array_equal(np.sort(table[:, 1]), stats.offsets[0])
    except ValueError:
        matches = False
    if not matches:
        logger.warning("%s does not list the records of %s: indexing them anew.", idx, idx.stem)
    return idx if matches else None


def _check_size(height: int, width: int, min_size: tuple[int, int], where: str) -> None:
    if height < min_size[0] or width < min_size[1]:
        raise ClientError(
            f"{where}: image is {height}x{width}, smaller than image_shape's "
            f"{min_size[0]}x{min_size[1]}. Set resize, use a smaller image_shape, or drop it."
        )


def record_iter(
    files: list[Path],
    *,
    index: Path,
    image_shape: tuple[int, int, int],
    batch_size: int,
    label_width: int = 1,
    shuffle: bool,
    augment: dict[str, Any],
    num_parts: int = 1,
    part_index: int = 0,
    seed: int = 0,
    dtype: str = "float32",
    decoders: int | None = None,
) -> mx.io.DataIter:
    """MXNet's ImageRecordIter (decode and augmentation on C++ threads) over `files`, with
    `index` listing their records: `shuffle` draws a new permutation of them every pass, and
    `num_parts` splits them by record (part i: records [i*s, (i+1)*s), s = ceil(count/parts)).

    Pixels stay raw 0-255 RGB (or grey), as `dtype`: normalisation lives in the network.
    `decoders` sets preprocess_threads (MXNet caps it at max(1, cores/2 - 1)).
    """
    threads = {"preprocess_threads": decoders} if decoders else {}
    return mx.io.ImageRecordIter(
        path_imgrec=";".join(str(f) for f in files),
        path_imgidx=str(index),
        data_shape=image_shape,
        batch_size=batch_size,
        label_width=label_width,
        shuffle=shuffle,
        round_batch=True,
        num_parts=num_parts,
        part_index=part_index,
        seed=seed,
        dtype=dtype,
        **threads,
        **augment,
    )


def part_count(count: int, num_parts: int, part_index: int) -> int:
    """How many of `count` indexed records part `part_index` of `num_parts` holds (dmlc's
    IndexedRecordIOSplitter: ceil(count/num_parts) each, the last parts fewer or none)."""
    step = math.ceil(count / num_parts)
    return max(0, min(step, count - part_index * step))
