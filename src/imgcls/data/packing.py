"""Image channels (images + one .lst) packed into RecordIO at start, for MXNet's ImageRecordIter.

Every image is read and decoded with preprocess.decode_image (the decoder serving uses) on a
thread pool, so a missing or broken image fails here, naming its .lst line. JPEG and PNG bytes
are packed as they are (im2rec.py --pass-through): ImageRecordIter's OpenCV decodes them as
decode_image does, EXIF orientation included. Other formats decode_image reads (BMP, TIFF,
WebP, ...) are re-encoded losslessly as PNG, because the OpenCV built into MXNet cannot decode
all of them (WebP, for one).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import mxnet as mx
import numpy as np

from imgcls.data.labels import count_classes
from imgcls.data.lst import LstEntry, read_lst
from imgcls.data.preprocess import ImageTooLarge, decode_image
from imgcls.data.recordio import RecordStats
from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.system import cpu_count

PASS_THROUGH_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n")
IN_FLIGHT_PER_WORKER = 16

T = TypeVar("T")
R = TypeVar("R")


def packing_folder() -> Path:
    """A new temporary folder (under $TMPDIR) for packed records, removed when the process exits."""
    folder = Path(tempfile.mkdtemp(prefix="imgcls-packed-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def pack_images(
    root: Path, lst: Path, out: Path, *, num_classes: int, multi_label: bool, channels: int
) -> RecordStats:
    """Pack the images `lst` lists (paths relative to `root`) into the RecordIO file `out`."""
    entries = read_lst(lst, num_classes, multi_label)
    workers = cpu_count()
    started = time.perf_counter()
    reencoded = 0
    writer = mx.recordio.MXIndexedRecordIO(str(out.with_suffix(".idx")), str(out), "w")
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="imgcls-pack") as pool:
            encode = _encoder(root, lst, channels)
            for position, (record, was_reencoded) in enumerate(
                in_order(pool, encode, entries, workers * IN_FLIGHT_PER_WORKER)
            ):
                writer.write_idx(position, record)
                reencoded += was_reencoded
    finally:
        writer.close()
    seconds = time.perf_counter() - started
    logger.info(
        "Packed %d images listed in %s into RecordIO in %.2f s (%.0f images/s, %d threads, "
        "%d re-encoded as PNG): %s",
        len(entries),
        lst,
        seconds,
        len(entries) / max(seconds, 1e-9),
        workers,
        reencoded,
        out,
    )
    labels = np.stack([entry.labels for entry in entries])
    return RecordStats(
        files=[out],
        count=len(entries),
        class_counts=count_classes(labels, num_classes, multi_label),
    )


def _encoder(root: Path, lst: Path, channels: int) -> Callable[[LstEntry], tuple[bytes, bool]]:
    def encode(entry: LstEntry) -> tuple[bytes, bool]:
        label = entry.labels if entry.labels.size > 1 else float(entry.labels[0])
        where = f"{lst}, line {entry.line}"
        packed = encode_image(root, entry.path, label, entry.index, channels, where)
        return packed.record, packed.reencoded

    return encode


@dataclass(frozen=True)
class Packed:
    """One image as a RecordIO record, whether it was re-encoded, and its (height, width)."""

    record: bytes
    reencoded: bool
    size: tuple[int, int]


def encode_image(
    root: Path,
    relative: str | Path,
    label: float | np.ndarray,
    index: int,
    channels: int,
    where: str,
    resize: int | None = None,
) -> Packed:
    """The record of the image `root/relative`, decoded first (ClientError naming `where`).

    JPEG and PNG bytes are kept as they are; other formats become PNG; `resize` (shorter side, as
    im2rec.py --resize) re-encodes as im2rec.py does, JPEG of quality 95.
    """
    image = root / relative
    data = _read(image, where, root)
    decoded = _decode(data, channels, where, image)
    reencode = resize is not None or not data.startswith(PASS_THROUGH_SIGNATURES)
    if resize is not None:
        decoded = _shorter_side(decoded, resize)
        data = _encoded(decoded, ".jpg", where, [cv2.IMWRITE_JPEG_QUALITY, 95])
    elif reencode:
        data = _encoded(decoded, ".png", where)
    header = mx.recordio.IRHeader(0, label, index, 0)
    return Packed(mx.recordio.pack(header, data), reencode, decoded.shape[:2])


def _shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """Resized so that its shorter side is `side` (im2rec.py's arithmetic and interpolation)."""
    height, width = image.shape[:2]
    size = (side, height * side // width) if height > width else (width * side // height, side)
    return cv2.resize(image, size).reshape(size[1], size[0], image.shape[2])


def _read(image: Path, where: str, root: Path) -> bytes:
    try:
        return image.read_bytes()
    except FileNotFoundError:
        raise ClientError(
            f"{where}: the image {image} does not exist. Add it under {root} at that relative "
            "path, or remove the line from the .lst."
        ) from None
    except OSError as exc:
        raise ClientError(f"{where}: cannot read the image {image}: {exc.strerror}.") from None


def _decode(data: bytes, channels: int, where: str, image: Path) -> np.ndarray:
    try:
        return decode_image(data, channels, f"the image {image}")
    except ImageTooLarge as exc:
        raise ClientError(f"{where}: {exc} Or remove the line from the .lst.") from None
    except ClientError:
        raise ClientError(
            f"{where}: the image {image} cannot be decoded (empty, truncated or not an image). "
            "Replace the file with a valid JPEG or PNG, or remove the line from the .lst."
        ) from None


def _encoded(image: np.ndarray, suffix: str, where: str, options: list[int] | None = None) -> bytes:
    """Re-encoding (PNG: lossless), BGR (or grey) as OpenCV expects."""
    pixels = image[:, :, 0] if image.shape[2] == 1 else image[:, :, ::-1]
    ok, encoded = cv2.imencode(suffix, pixels, options or [])
    if not ok:
        raise ClientError(f"{where}: the image decodes but cannot be re-encoded as {suffix}.")
    return encoded.tobytes()


def in_order(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """fn over items on the pool, results in order, at most `window` items in flight."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
