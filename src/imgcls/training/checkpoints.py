"""The model/ checkpoint policy: which epochs' parameters stay in the model folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgcls.log import logger


@dataclass
class ModelCheckpoints:
    """The model/ policy: the best validation epoch (older bests removed), every
    `frequency`-th epoch when set, and the last epoch when there is no validation."""

    export: Callable[[int], Path]
    remove: Callable[[int], None]
    frequency: int | None
    enabled: bool = True
    best_accuracy: float = -1.0
    best_epoch: int = 0
    last_epoch: int = 0

    def on_epoch_end(self, epoch: int, accuracy: float | None, is_last: bool) -> Path | None:
        """`epoch` is 1-based, as in the file names; the params file written for it, if any."""
        periodic = bool(self.frequency) and epoch % self.frequency == 0
        written = None
        if accuracy is not None:
            if accuracy > self.best_accuracy:
                logger.info("Storing the best model with validation accuracy: %f", accuracy)
                written = self._save(epoch)
                self._drop(self.best_epoch)
                self.best_accuracy, self.best_epoch = accuracy, epoch
            elif periodic:
                written = self._save(epoch)
        elif periodic or is_last:
            written = self._save(epoch)
            self._drop(self.last_epoch)
            self.last_epoch = epoch
        return written

    def _save(self, epoch: int) -> Path | None:
        if not self.enabled:
            return None
        path = self.export(epoch)
        logger.info('Saved checkpoint to "%s"', path)
        return path

    def _drop(self, epoch: int) -> None:
        """Remove an earlier file unless the periodic policy keeps it."""
        if self.enabled and epoch and not (self.frequency and epoch % self.frequency == 0):
            self.remove(epoch)

    def state(self) -> dict:
        return {
            "best_accuracy": self.best_accuracy,
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
        }
