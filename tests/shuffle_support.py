"""Label-ordered RecordIO for the shuffling tests: records big enough (a PNG padded with an
ancillary chunk decoders skip) that a channel spans several of ImageRecordIter's 64 MB chunks,
while the images stay tiny."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
from conftest import pattern_image

IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"


def padded_png(image: np.ndarray, pad_bytes: int) -> bytes:
    """`image` as PNG with a private ancillary chunk of `pad_bytes` before IEND (PNG spec 5.4:
    decoders ignore unknown ancillary chunks)."""
    png = cv2.imencode(".png", np.ascontiguousarray(image[:, :, ::-1]))[1].tobytes()
    assert png.endswith(IEND)
    kind, body = b"pdIn", bytes(pad_bytes)
    chunk = struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return png[: -len(IEND)] + chunk + IEND


def write_ordered_rec(
    path: Path, labels: list[int], order: list[int], pad_bytes: int, size: int = 16
) -> Path:
    """Record k of `order` is example order[k] (label labels[order[k]], id order[k]): the same
    records in any order, written with MXNet's own MXRecordIO and recordio.pack."""
    rng = np.random.default_rng(0)
    images = [pattern_image(label % 4, size, 3, rng) for label in labels]
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for example in order:
        header = mx.recordio.IRHeader(0, labels[example], example, 0)
        writer.write(mx.recordio.pack(header, padded_png(images[example], pad_bytes)))
    writer.close()
    return path
