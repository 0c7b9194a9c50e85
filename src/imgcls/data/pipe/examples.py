"""Streamed RecordIO records -> examples (image bytes and label row), for the two Pipe inputs.

- RecordIO channels (RecordWrapperType None): each record is an im2rec image record, an `IfQQ`
  header (with `flag` float32 labels when packed with labels) then the image bytes.
- Augmented manifests (RecordWrapperType RecordIO): two records per example, in AttributeNames
  order: the image bytes, then the label text (`3`, `[1, 0, 1]`, or class ids `[0, 2]`).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

import mxnet as mx
import numpy as np

from imgcls.data.labels import label_row, text_label_row
from imgcls.errors import ClientError

HEADER_SIZE = struct.calcsize("IfQQ")


@dataclass(frozen=True)
class Example:
    """One image to decode, its label row, and where it came from (for error messages)."""

    where: str
    image: bytes
    label: np.ndarray


def recordio_examples(
    records: Iterator[tuple[str, bytes]], num_classes: int, multi_label: bool
) -> Iterator[Example]:
    """im2rec records: the label comes from the record's header."""
    for where, record in records:
        header, image = _unpack(record, where)
        label = label_row(np.atleast_1d(header.label), where, num_classes, multi_label)
        yield Example(where, image, label)


def _unpack(record: bytes, where: str) -> tuple[mx.recordio.IRHeader, bytes]:
    flag = struct.unpack_from("I", record)[0] if len(record) >= HEADER_SIZE else None
    if flag is None or len(record) < HEADER_SIZE + 4 * flag:
        raise ClientError(
            f"{where}: not an im2rec image record (header plus image bytes). Stream .rec files "
            "written by MXNet's tools/im2rec.py; for an augmented manifest set the channel's "
            "RecordWrapperType to RecordIO."
        )
    return mx.recordio.unpack(record)


def manifest_examples(
    records: Iterator[tuple[str, bytes]],
    num_classes: int,
    multi_label: bool,
    label_format: str,
) -> Iterator[Example]:
    """Augmented-manifest pairs: an image record, then its label record."""
    for where, image in records:
        labelled = next(records, None)
        if labelled is None:
            raise ClientError(
                f"{where}: an image record without the label record that must follow it. Each "
                "example needs two attributes, AttributeNames [image attribute, label attribute]."
            )
        label_where, text = labelled
        label = text_label_row(text, label_where, num_classes, multi_label, label_format)
        yield Example(where, image, label)
