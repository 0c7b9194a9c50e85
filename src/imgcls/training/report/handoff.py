"""The report drawn by the supervising parent while the training child finishes.

The child imports MXNet (2-3 s, one core) while the parent, idle, imports matplotlib (0.6 s)
on the other core; at the end the child writes report.json and names its folder on a pipe, and
the parent draws the PNGs and report.html while the child packs model.tar.gz and exits. Only the
supervised child gets the pipe (its own children, such as ps-lite's roles and a multi-host
worker, never see it: it is taken out of the environment), and without one the job draws its
report itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, MutableMapping
from pathlib import Path

from imgcls.training.report.drawing import draw_report_safely

REPORT_FD_ENV = "IMGCLS_REPORT_FD"


class ReportDrawer:
    """The parent's side: a pipe for the child, and a thread that draws what it names."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()
        self._thread = threading.Thread(target=self._draw, name="imgcls-report", daemon=True)

    def child_env(self) -> dict[str, str]:
        return {REPORT_FD_ENV: str(self._write)}

    @property
    def child_fds(self) -> tuple[int]:
        return (self._write,)

    def start(self) -> None:
        """Once the child holds the pipe: close this end (the child's exit then ends the
        read) and start importing matplotlib and waiting."""
        os.close(self._write)
        self._thread.start()

    def finish(self) -> None:
        """Wait until the report the child named, if any, is drawn (a Ctrl-C stops waiting)."""
        with contextlib.suppress(KeyboardInterrupt):
            self._thread.join()

    def _draw(self) -> None:
        from imgcls.training.report import plots  # noqa: F401  (imported while the child starts)

        with os.fdopen(self._read) as pipe:
            folder = pipe.readline().strip()
        if folder:
            draw_report_safely(Path(folder))


def take_hand_over(
    environ: MutableMapping[str, str] = os.environ,
) -> Callable[[Path], None] | None:
    """The child's side: a function that hands the report folder to the parent, or None
    without a pipe. The pipe leaves the environment, so no grandchild inherits its number."""
    value = environ.pop(REPORT_FD_ENV, None)
    if value is None or not value.isdigit():
        return None  # no parent listening (a stray value is not a pipe of ours)
    fd = int(value)

    def hand_over(folder: Path) -> None:
        with os.fdopen(fd, "w") as pipe:
            pipe.write(f"{folder}\n")

    return hand_over
