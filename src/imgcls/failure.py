"""The one place that turns an exception into `output/failure`, a log line and an exit code."""

from __future__ import annotations

import traceback
from pathlib import Path

from imgcls.errors import ImgclsError, TrainingInterrupted
from imgcls.log import logger


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
