"""Turn a job's data channels into what the fit loop reads: record files, counts, iterators.

File mode: RecordIO channels are read where they are, through an index of their records (the
channel's own .idx when it matches, else one built in a temporary folder); image channels
(images + .lst) are packed into RecordIO and indexed in a temporary folder first. Both then go
through MXNet's ImageRecordIter, which shuffles the whole channel every pass; a small training
channel of one image size is decoded once instead (data/in_memory.py). Pipe mode: RecordIO or
augmented-manifest streams, read epoch by epoch from FIFOs (data/pipe/).

Threads: OpenMP gets every core (cli.configure_threads); ImageRecordIter's decoders keep MXNet's
default on CPU hosts and get every core on GPU hosts (MXNet caps them at max(1, cores/2 - 1)).

Several hosts: a FullyReplicated channel is on every host whole, so each host reads its part
(ImageRecordIter's num_parts); a ShardedByS3Key channel holds only this host's files, which it
reads whole. Every host then runs the same number of training batches per epoch (see
`agree_on_batches` in training/distributed/worker.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import mxnet as mx
import numpy as np

from imgcls.config.channels import DATA_CHANNELS, Channel
from imgcls.config.environment import Paths
from imgcls.config.hyperparameters import Hyperparameters
from imgcls.data.augmentation import train_augmenter_args, validation_augmenter_args
from imgcls.data.in_memory import (
    IN_MEMORY_AUGMENTATIONS,
    InMemoryBatches,
    decode_in_background,
    fits_in_memory,
    stored_shape,
    total_memory,
)
from imgcls.data.labels import (
    LABEL_FORMATS,
    MULTI_HOT,
    log_positive_weights,
    positive_weights,
)
from imgcls.data.lst import find_lst
from imgcls.data.packing import pack_images, packing_folder
from imgcls.data.pipe.batches import PipeBatches
from imgcls.data.pipe.examples import manifest_examples, recordio_examples
from imgcls.data.pipe.fifo import PipeSource
from imgcls.data.recordio import (
    REC_SUFFIXES,
    RecordStats,
    part_count,
    record_index,
    record_iter,
    scan_records,
)
from imgcls.errors import ClientError
from imgcls.system import cpu_count

SHARDED_BY_S3_KEY = "ShardedByS3Key"


@dataclass
class ChannelData:
    """One data channel (train or validation) ready to be read.

    File mode: `files` are RecordIO files and `stats` what their check found. Pipe mode: `pipe`
    streams the examples, which are only counted as they arrive (`stats` stays empty).
    """

    name: str
    folder: Path
    files: list[Path]
    stats: RecordStats
    index: Path | None = None
    pipe: PipeSource | None = None
    distribution: str = "FullyReplicated"

    @property
    def is_pipe(self) -> bool:
        return self.pipe is not None

    @property
    def count(self) -> int:
        return self.stats.count

    @property
    def class_counts(self) -> np.ndarray:
        return self.stats.class_counts

    def positive_weights(self) -> np.ndarray:
        """Multi-label loss weight of each class's positives, from this channel's labels."""
        if self.pipe is not None:
            return self.pipe.positive_weights()
        return positive_weights(self.class_counts, self.count)

    @property
    def is_sharded(self) -> bool:
        """True for a ShardedByS3Key channel: each host holds its own files."""
        return self.distribution == SHARDED_BY_S3_KEY

    def part(self, num_hosts: int, host_index: int) -> tuple[int, int]:
        """(num_parts, part_index) for ImageRecordIter on this host: ShardedByS3Key channels
        hold only this host's records already; FullyReplicated ones are split by host."""
        if self.is_sharded:
            return 1, 0
        return num_hosts, host_index

    def describe(self) -> str:
        if self.pipe is not None:
            return f"streamed from {self.pipe.fifo(0).parent}/{self.name}_<epoch>"
        return f"{len(self.files)} file(s), {self.count} images"


def load_channels(
    paths: Paths, channels: dict[str, Channel], hp: Hyperparameters
) -> dict[str, ChannelData]:
    """The train and validation channels, checked (File mode) or ready to stream (Pipe mode)."""
    data = {}
    folder = None
    for name in DATA_CHANNELS:
        channel = channels.get(name)
        if channel is None:
            continue
        if channel.config.is_pipe:
            data[name] = _pipe_channel(paths, channel, hp)
        elif channel.is_image:
            folder = folder or packing_folder()
            data[name] = _image_channel(channel, channels[f"{name}_lst"], hp, folder)
        else:
            folder = folder or packing_folder()
            data[name] = load_channel(channel, hp, folder)
    train = data["train"]
    if hp.use_weighted_loss and not train.is_pipe:
        log_positive_weights(train.positive_weights(), f"the {train.count} images of 'train'")
    return data


def _image_channel(images: Channel, lst: Channel, hp: Hyperparameters, folder: Path) -> ChannelData:
    """Images listed in a .lst, packed into RecordIO in `folder`."""
    stats = pack_images(
        images.path,
        find_lst(lst),
        folder / f"{images.name}.rec",
        num_classes=hp.num_classes,
        multi_label=hp.multi_label,
        channels=hp.image_shape[0],
    )
    index = stats.files[0].with_suffix(".idx")
    distribution = images.config.distribution
    return ChannelData(
        images.name, images.path, stats.files, stats, index, distribution=distribution
    )


def _pipe_channel(paths: Paths, channel: Channel, hp: Hyperparameters) -> ChannelData:
    """A Pipe-mode channel: im2rec records, or an augmented manifest when RecordIO-wrapped."""
    name = channel.name
    setting = f"set RecordWrapperType to RecordIO on channel {name!r}"
    if channel.config.record_wrapper == "RecordIO":
        examples = partial(
            manifest_examples,
            num_classes=hp.num_classes,
            multi_label=hp.multi_label,
            label_format=_label_format(channel),
        )
        framing_hint = "The stream is corrupt: the platform wraps every attribute in RecordIO."
        decode_hint = (
            "Check the manifest's image attribute; AttributeNames must list the image first, "
            "then the label."
        )
    elif channel.is_image:
        raise ClientError(
            f"Channel {name!r}: {channel.config.content_type} in Pipe mode is read as an "
            f"augmented manifest stream, which must be RecordIO-wrapped: {setting}."
        )
    else:
        examples = partial(
            recordio_examples, num_classes=hp.num_classes, multi_label=hp.multi_label
        )
        framing_hint = (
            f"If the channel is an augmented manifest, {setting}; otherwise stream .rec files "
            "written by MXNet's tools/im2rec.py."
        )
        decode_hint = "Repack the image with MXNet's tools/im2rec.py."
    source = PipeSource(
        name=name,
        fifo=partial(paths.pipe_path, name),
        to_examples=examples,
        framing_hint=framing_hint,
        decode_hint=decode_hint,
        num_classes=hp.num_classes,
        multi_label=hp.multi_label,
        log_weights=bool(hp.use_weighted_loss) and name == "train",
    )
    empty = RecordStats(files=[], class_counts=np.zeros(hp.num_classes, dtype=np.int64))
    return ChannelData(name, paths.data_dir, [], empty, pipe=source)


def _label_format(channel: Channel) -> str:
    label_format = channel.config.content_type_params.get("label-format", MULTI_HOT)
    if label_format not in LABEL_FORMATS:
        raise ClientError(
            f"Channel {channel.name!r}: label-format={label_format!r} in content type "
            f"{channel.config.content_type!r}; valid: {', '.join(LABEL_FORMATS)}."
        )
    return label_format


def load_channel(channel: Channel, hp: Hyperparameters, folder: Path) -> ChannelData:
    """Find, check and index a File-mode RecordIO channel's records (a new index goes in
    `folder`, never in the channel's own folder)."""
    if not channel.is_recordio:
        raise ClientError(
            f"Channel {channel.name!r}: content type {channel.config.content_type!r} is not "
            "supported by this version of imgcls; use application/x-recordio."
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
    index = record_index(stats, folder / f"{channel.name}.idx")
    distribution = channel.config.distribution
    return ChannelData(channel.name, channel.path, files, stats, index, distribution=distribution)


def batches_per_epoch(count: int, batch_size: int) -> int:
    """Batches for one pass over `count` records (the last one completed from the next pass)."""
    return max(1, math.ceil(count / batch_size))


def local_batches(data: ChannelData, batch_size: int, parts: tuple[int, int]) -> int:
    """Batches for one pass over this host's part of a File-mode channel; a ClientError when
    the part holds fewer than `batch_size` records (ImageRecordIter needs a whole batch)."""
    count = part_count(data.count, *parts)
    if count < batch_size:
        raise ClientError(
            f"Host #{parts[1] + 1} of {parts[0]}: its part of channel {data.name!r} holds "
            f"{count} of the channel's {data.count} images ({data.distribution}), fewer than "
            f"mini_batch_size={batch_size}. Add images or lower mini_batch_size."
        )
    return batches_per_epoch(count, batch_size)


def train_iter(
    data: ChannelData,
    hp: Hyperparameters,
    batch_size: int,
    parts: tuple[int, int] = (1, 0),
    batches: int | None = None,
    gpus: int = 0,
) -> mx.io.DataIter:
    """Shuffled, augmented uint8 training batches of this host's `parts` (the network's input
    cast happens on each device): `batches` per epoch (default: one pass), read as one stream
    of passes, each a new permutation of the records (the last batch of a pass is completed
    from the next). Small channels are decoded once (data/in_memory.py); with `gpus`, every
    core decodes. Pipe mode: as many as each epoch's FIFO delivers."""
    if data.pipe is not None:
        return PipeBatches(
            data.pipe,
            batch_size=batch_size,
            image_shape=hp.image_shape,
            augment=train_augmenter_args(hp.augmentation_type, hp.resize),
            shuffle=True,
            min_count=batch_size,
            expected_count=hp.num_training_samples,
        )
    if batches is None:
        batches = local_batches(data, batch_size, parts)
    label_width = hp.num_classes if hp.multi_label else 1
    shape = decode_once_shape(data, hp, parts)
    if shape is not None:
        count = part_count(data.count, *parts)
        decoded = decode_in_background(data.files, data.index, shape, label_width, count, parts)
        return InMemoryBatches(
            decoded,
            shape[0],
            label_width,
            batch_size=batch_size,
            batches=batches,
            crop=(hp.height, hp.width),
            random_crop=hp.augmentation_type == "crop",
        )
    inner = record_iter(
        data.files,
        index=data.index,
        image_shape=hp.image_shape,
        batch_size=batch_size,
        label_width=label_width,
        shuffle=True,
        augment=train_augmenter_args(hp.augmentation_type, hp.resize),
        num_parts=parts[0],
        part_index=parts[1],
        dtype="uint8",
        decoders=cpu_count() if gpus else None,
    )
    # Never reset ImageRecordIter: right after it starts, or after a pass whose last batch
    # took records of the next, reset() skips what it has read ahead. Unreset, passes follow
    # each other whole.
    return mx.io.ResizeIter(inner, batches, reset_internal=False)


def decode_once_shape(
    data: ChannelData, hp: Hyperparameters, parts: tuple[int, int]
) -> tuple[int, int, int] | None:
    """The records' common stored shape when the channel is decoded once into memory: no
    resize, crop or no augmentation, one size for every record, and this part's decoded
    pixels within data/in_memory.py's memory bound; else None."""
    if hp.resize or hp.augmentation_type not in IN_MEMORY_AUGMENTATIONS:
        return None
    shape = stored_shape(data.stats, hp.image_shape[0])
    count = part_count(data.count, *parts)
    return shape if shape and fits_in_memory(count, shape, total_memory()) else None


def validation_iter(
    data: ChannelData, hp: Hyperparameters, batch_size: int, parts: tuple[int, int] = (1, 0)
) -> Iterable[mx.io.DataBatch]:
    """Centre-cropped validation batches; a fresh iterator gives every sample of this host's
    `parts` exactly once (none when the part is empty; smaller batches when the part holds
    fewer records than one, which ImageRecordIter refuses). Pipe mode: each one reads the next
    FIFO."""
    if data.pipe is not None:
        return PipeBatches(
            data.pipe,
            batch_size=batch_size,
            image_shape=hp.image_shape,
            augment=validation_augmenter_args(hp.resize),
            shuffle=False,
        )
    count = part_count(data.count, *parts)
    if count == 0:
        return []
    return record_iter(
        data.files,
        index=data.index,
        image_shape=hp.image_shape,
        batch_size=min(batch_size, count),
        label_width=hp.num_classes if hp.multi_label else 1,
        shuffle=False,
        augment=validation_augmenter_args(hp.resize),
        num_parts=parts[0],
        part_index=parts[1],
    )
