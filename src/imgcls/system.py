"""What imgcls asks of the machine: the cores it may use, and files written all or nothing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def cpu_count() -> int:
    """Cores this process may run on (its affinity mask, not the machine's total)."""
    return len(os.sched_getaffinity(0))


def atomic_write(path: Path, write: Callable[[Path], None], mode: int = 0o644) -> None:
    """Have `write` fill a temporary file beside `path`, flush it to disk, then rename it.

    A reader sees the old file or the whole new one, never a part; a failed `write` leaves
    `path` untouched and no temporary file behind.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.chmod(mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of a bytes value."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))
