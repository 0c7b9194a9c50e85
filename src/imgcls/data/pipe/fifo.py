"""Pipe mode's FIFOs: one per epoch (`<channel>_0`, `<channel>_1`, ...), read as RecordIO records
and turned into examples; the first pass tallies the labels."""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from imgcls.data.labels import positive_weights
from imgcls.data.pipe.examples import Example
from imgcls.errors import ClientError

RECORDIO_MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", RECORDIO_MAGIC)
LENGTH_MASK = (1 << 29) - 1
PIPE_WAIT_SECONDS = 600.0
POLL_SECONDS = 0.05


def wait_for_pipe(path: Path, timeout: float, channel: str) -> None:
    """Return once `path` exists; a ClientError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() >= deadline:
            raise ClientError(
                f"Pipe mode: {path} did not appear within {timeout:g} s. Channel {channel!r} "
                f"is read from one FIFO per epoch ({channel}_0, {channel}_1, ...), created by the "
                "platform; for a local run create them, or set TrainingInputMode to File."
            )
        time.sleep(POLL_SECONDS)


def read_records(stream: BinaryIO, name: str, hint: str) -> Iterator[tuple[str, bytes]]:
    """(where, payload) for every RecordIO record of `stream`; split records are joined."""
    index, offset, parts = 0, 0, []
    while True:
        head = stream.read(8)
        if not head and not parts:
            return
        where = f"{name}, record {index}"
        if len(head) < 8:
            raise ClientError(f"{where} (byte {offset}): the stream ends inside a record header.")
        magic, word = struct.unpack("<II", head)
        if magic != RECORDIO_MAGIC:
            raise ClientError(
                f"{where} (byte {offset}): does not start with the RecordIO magic number "
                f"0x{RECORDIO_MAGIC:08x}. {hint}"
            )
        length = word & LENGTH_MASK
        padded = (length + 3) & ~3
        payload = stream.read(padded)
        if len(payload) < padded:
            raise ClientError(f"{where} (byte {offset}): the stream ends inside the record.")
        parts.append(payload[:length])
        offset += 8 + padded
        if word >> 29 in (0, 3):
            yield where, MAGIC_BYTES.join(parts)
            index, parts = index + 1, []


@dataclass
class PipeSource:
    """A Pipe-mode channel: its FIFOs, how their records become examples, and a first-pass tally."""

    name: str
    fifo: Callable[[int], Path]
    to_examples: Callable[[Iterator[tuple[str, bytes]]], Iterator[Example]]
    framing_hint: str
    decode_hint: str
    num_classes: int
    multi_label: bool
    log_weights: bool = False
    wait_seconds: float = PIPE_WAIT_SECONDS
    epochs_opened: int = field(default=0, init=False)
    first_pass_count: int = field(default=0, init=False)
    class_counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.class_counts = np.zeros(self.num_classes, dtype=np.int64)

    def next_epoch(self) -> int:
        """The number of the next FIFO to open."""
        self.epochs_opened += 1
        return self.epochs_opened - 1

    def examples(self, epoch: int) -> Iterator[Example]:
        """Wait for the epoch's FIFO, then stream its examples (epoch 0 is tallied)."""
        path = self.fifo(epoch)
        wait_for_pipe(path, self.wait_seconds, self.name)
        with open(path, "rb") as stream:
            for example in self.to_examples(read_records(stream, str(path), self.framing_hint)):
                if epoch == 0:
                    self._tally(example.label)
                yield example

    def _tally(self, label: np.ndarray) -> None:
        self.first_pass_count += 1
        if self.multi_label:
            self.class_counts += label.astype(np.int64)
        else:
            self.class_counts[int(label[0])] += 1

    def positive_weights(self) -> np.ndarray:
        """From the examples of the first pass so far (all of them once epoch 0 has ended)."""
        return positive_weights(self.class_counts, max(self.first_pass_count, 1))
