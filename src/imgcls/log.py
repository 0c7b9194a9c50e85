"""The log format of the built-in algorithm, which hyperparameter tuning jobs parse."""

import logging
import sys

LOG_FORMAT = "[%(asctime)s %(levelname)s %(thread)d] %(message)s"
DATE_FORMAT = "%m/%d/%Y %H:%M:%S"

logger = logging.getLogger("imgcls")


def setup_logging(level: int = logging.INFO) -> None:
    """Send imgcls's log lines to stdout in the contract's shape, once."""
    if any(getattr(h, "_imgcls", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(LOG_FORMAT, DATE_FORMAT))
    handler._imgcls = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
