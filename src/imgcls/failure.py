"""The one place that turns an exception into `output/failure`, a log line and an exit code."""

from __future__ import annotations

import signal
import traceback
from pathlib import Path

from imgcls.errors import AlgorithmError, ClientError, ImgclsError, TrainingInterrupted
from imgcls.log import logger
from imgcls.system import signal_name

MEMORY_ADVICE = "lower mini_batch_size or image_shape, or use an instance type with more memory"


def failure_text(exc: BaseException) -> str:
    """`ClientError: ...` for the user's mistakes, `AlgorithmError: ...` for ours."""
    if isinstance(exc, ImgclsError):
        return f"{exc.kind}: {exc}"
    return f"AlgorithmError: {type(exc).__name__}: {exc}"


def report_failure(exc: BaseException, failure_file: Path) -> int:
    """Log the reason, write it to `failure_file` and return the process exit code."""
    if isinstance(exc, TrainingInterrupted):
        logger.info("Stopped: %s.", exc)
        return exc.exit_code
    text = failure_text(exc)
    if not isinstance(exc, ImgclsError):
        logger.error("".join(traceback.format_exception(exc)).rstrip())
    logger.error(text)
    try:
        failure_file.parent.mkdir(parents=True, exist_ok=True)
        failure_file.write_text(text + "\n", encoding="utf-8")
    except OSError as write_error:
        logger.error("Could not write %s: %s", failure_file, write_error)
    return 1


def killed_by_signal(process: str, signum: int) -> ImgclsError:
    """The failure of `process` ("The training process") when signal `signum` ended it.

    SIGKILL, which a process can neither catch nor report, is what the kernel's out-of-memory
    killer sends: the user fixes it with a smaller batch or image, so it is a ClientError.
    """
    name = signal_name(signum)
    if signum == signal.SIGKILL:
        return ClientError(
            f"{process} was killed by {name}, likely by the out-of-memory killer: training "
            f"needed more memory than this instance has. To fix it, {MEMORY_ADVICE}."
        )
    return AlgorithmError(
        f"{process} was killed by {name}. If it ran out of memory, {MEMORY_ADVICE}."
    )
