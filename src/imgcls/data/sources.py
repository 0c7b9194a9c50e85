"""Turn a job's data channels into what the fit loop reads: record files, counts, iterators."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.augment import train_augmenter_args, validation_augmenter_args
from imgcls.data.channels import Channel
from imgcls.data.recordio import REC_SUFFIXES, RecordStats, record_iter, scan_records
from imgcls.errors import ClientError


@dataclass
class ChannelData:
    """One data channel (train or validation) ready to be read."""

    name: str
    files: list[Path]
    stats: RecordStats

    @property
    def count(self) -> int:
        return self.stats.count

    @property
    def class_counts(self) -> np.ndarray:
        return self.stats.class_counts


def load_channel(channel: Channel, hp) -> ChannelData:
    """Find and check a File-mode RecordIO channel's records."""
    if not channel.is_recordio:
        raise ClientError(
            f"Channel {channel.name!r}: content type {channel.config.content_type!r} is not "
            "supported by this version of imgcls; use application/x-recordio."
        )
    if channel.config.is_pipe:
        raise ClientError(
            f"Channel {channel.name!r}: Pipe mode is not supported by this version of imgcls; "
            "use TrainingInputMode File."
        )
    files = channel.files(REC_SUFFIXES)
    if not files:
        raise ClientError(
            f"Channel {channel.name!r}: no .rec file in {channel.path}. Pack the images with "
            "MXNet's tools/im2rec.py, or set the content type to application/x-image."
        )
    min_size = None if hp.resize else (hp.image_shape[1], hp.image_shape[2])
    stats = scan_records(
        files, num_classes=hp.num_classes, multi_label=hp.multi_label, min_size=min_size
    )
    if stats.count == 0:
        raise ClientError(f"Channel {channel.name!r}: the .rec files in {channel.path} are empty.")
    return ChannelData(channel.name, files, stats)


def batches_per_epoch(count: int, batch_size: int) -> int:
    """Every sample once per epoch; the last batch is completed with the next epoch's samples."""
    return max(1, math.ceil(count / batch_size))


def train_iter(
    data: ChannelData, hp, batch_size: int, num_parts: int = 1, part_index: int = 0
) -> mx.io.DataIter:
    """Shuffled, augmented training batches; a fixed number per epoch (ResizeIter)."""
    inner = record_iter(
        data.files,
        image_shape=hp.image_shape,
        batch_size=batch_size,
        label_width=hp.num_classes if hp.multi_label else 1,
        shuffle=True,
        augment=train_augmenter_args(hp.augmentation_type, hp.resize),
        num_parts=num_parts,
        part_index=part_index,
    )
    per_part = math.ceil(data.count / num_parts)
    return mx.io.ResizeIter(inner, batches_per_epoch(per_part, batch_size))


def validation_iter(data: ChannelData, hp, batch_size: int) -> mx.io.DataIter:
    """Centre-cropped validation batches; a fresh iterator gives every sample exactly once."""
    return record_iter(
        data.files,
        image_shape=hp.image_shape,
        batch_size=batch_size,
        label_width=hp.num_classes if hp.multi_label else 1,
        shuffle=False,
        augment=validation_augmenter_args(hp.resize),
    )
