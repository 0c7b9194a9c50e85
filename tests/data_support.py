"""Helpers for the data-channel tests: image folders, im2rec.py lists, RecordIO bytes, and a
stand-in for the platform's Pipe mode."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
from conftest import pattern_image

IM2REC = Path(mx.__file__).parent / "tools" / "im2rec.py"
PIPE_READER_DEADLINE = 120.0


def multi_pattern_image(classes: list[int], size: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy RGB image with one bright quadrant per class present (classes 0-3)."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    for cls in classes:
        bright = pattern_image(cls, size, 3, rng) >= 190
        image[bright] = rng.integers(190, 255, int(bright.sum()), dtype=np.uint8)
    return image


def write_image(path: Path, image: np.ndarray) -> Path:
    """Save an RGB image (format from the suffix) with OpenCV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
    return path


def class_folders(root: Path, per_class: int, classes: int = 4, size: int = 24, seed: int = 0):
    """root/class<k>/<i>.jpg pattern images: the layout im2rec.py --list --recursive labels."""
    rng = np.random.default_rng(seed)
    for cls in range(classes):
        for index in range(per_class):
            write_image(root / f"class{cls}" / f"{index}.jpg", pattern_image(cls, size, 3, rng))


def im2rec(*args: str | Path) -> subprocess.CompletedProcess:
    """Run MXNet's own tools/im2rec.py."""
    command = [sys.executable, str(IM2REC), *map(str, args)]
    return subprocess.run(command, check=True, capture_output=True, text=True)


def im2rec_list(prefix: Path, root: Path) -> Path:
    """`im2rec.py --list --recursive prefix root`: the .lst the user would make."""
    prefix.parent.mkdir(parents=True, exist_ok=True)
    im2rec("--list", "--recursive", prefix, root)
    return prefix.with_name(prefix.name + ".lst")


def recordio_bytes(records: list[bytes]) -> bytes:
    """The bytes of a RecordIO stream holding `records`, framed by MXNet's own writer."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "stream.rec"
        writer = mx.recordio.MXRecordIO(str(path), "w")
        for record in records:
            writer.write(record)
        writer.close()
        return path.read_bytes()


def manifest_stream(images: list[np.ndarray], labels: Iterable[str]) -> bytes:
    """An augmented-manifest stream, RecordIO-wrapped: image bytes, then label text, per example."""
    records = []
    for image, label in zip(images, labels, strict=True):
        records.append(cv2.imencode(".png", image[:, :, ::-1])[1].tobytes())
        records.append(label.encode())
    return recordio_bytes(records)


class PlatformPipe(threading.Thread):
    """Plays the platform in Pipe mode: creates `<channel>_<epoch>` FIFOs one after another and
    writes `payload` into each once the trainer opens it. `late` delays chosen epochs' FIFOs."""

    def __init__(
        self,
        data_dir: Path,
        channel: str,
        payload: bytes,
        epochs: int,
        late: dict[int, float] | None = None,
    ) -> None:
        super().__init__(daemon=True, name=f"platform-pipe-{channel}")
        self.data_dir, self.channel, self.payload = data_dir, channel, payload
        self.epochs, self.late = epochs, late or {}
        self.served = 0

    def run(self) -> None:
        for epoch in range(self.epochs):
            time.sleep(self.late.get(epoch, 0.0))
            path = self.data_dir / f"{self.channel}_{epoch}"
            os.mkfifo(path)
            descriptor = _open_once_read(path)
            if descriptor is None:
                return
            try:
                with os.fdopen(descriptor, "wb") as fifo:
                    fifo.write(self.payload)
            except BrokenPipeError:
                return
            self.served += 1


def _open_once_read(path: Path) -> int | None:
    """Open a FIFO for writing once a reader has it open (None if none comes in time)."""
    deadline = time.monotonic() + PIPE_READER_DEADLINE
    while time.monotonic() < deadline:
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise
            time.sleep(0.02)
            continue
        os.set_blocking(descriptor, True)
        return descriptor
    return None
