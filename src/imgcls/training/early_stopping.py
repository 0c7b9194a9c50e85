"""Early stopping on validation accuracy, with the built-in algorithm's relative tolerance."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    """Stop when validation accuracy has not improved (relative tolerance) for `patience` epochs,
    once `min_epochs` epochs have run."""

    min_epochs: int
    patience: int
    tolerance: float
    best: float = -1.0
    epochs_without_improvement: int = 0

    def should_stop(self, epochs_done: int, accuracy: float) -> bool:
        if self._improves(accuracy):
            self.best = accuracy
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return epochs_done >= self.min_epochs and self.epochs_without_improvement >= self.patience

    def _improves(self, accuracy: float) -> bool:
        if accuracy <= self.best:
            return False
        if self.best <= 0:
            return True
        return (accuracy - self.best) / self.best >= self.tolerance

    def state(self) -> dict:
        return asdict(self)
