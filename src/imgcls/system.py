"""What imgcls asks of the machine: the cores it may use, files written all or nothing, and
child processes that run this same code and die with their parent."""

from __future__ import annotations

import atexit
import ctypes
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NoReturn

PR_SET_PDEATHSIG = 1
SOURCE_ROOT = Path(__file__).resolve().parent.parent


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


def die_with_parent() -> None:
    """A child's `preexec_fn`: the kernel SIGKILLs the child when its parent dies."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This process's environment plus `extra`, with the folder holding this imgcls first on
    PYTHONPATH, so that a child's `python -m imgcls.cli` runs this same code."""
    path = os.pathsep.join(filter(None, [str(SOURCE_ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, **extra, "PYTHONPATH": path}


def exit_now(code: int) -> NoReturn:
    """End this process with `code` after its atexit handlers (the log's flush, temporary
    folders' removal) but without the interpreter's teardown of every module and object."""
    atexit._run_exitfuncs()  # the interpreter's own exit step; it has no public name
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def signal_name(signum: int) -> str:
    """`SIGKILL` for 9; `signal 64` for a number without a name."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
