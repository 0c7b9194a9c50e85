"""What the fit loop records for the report: per epoch, the training and validation figures,
the learning rate, the throughput and the validation counts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the report is drawn by a process without MXNet
    from mxnet import gluon

    from imgcls.training.loop import EpochStats
    from imgcls.training.report.confusion import ValidationCounts


@dataclass
class EpochRecord:
    """One epoch (0-based, as the logs number them); validation fields are None without a
    validation channel."""

    epoch: int
    train: dict[str, float]
    learning_rate: float
    images_per_second: float
    seconds: float
    validation: dict[str, float] | None = None
    counts: dict | None = None


@dataclass
class History:
    """Every epoch's record, in order; kept in the resumable state so a resumed job's report
    covers the epochs run before the interruption."""

    epochs: list[EpochRecord] = field(default_factory=list)

    def recorder(
        self, trainer: gluon.Trainer, counts: ValidationCounts | None
    ) -> Callable[[int, EpochStats, list[tuple[str, float]] | None], None]:
        """The fit loop's `record` hook."""

        def record(epoch: int, stats: EpochStats, values: list[tuple[str, float]] | None) -> None:
            validation = None
            if values is not None:
                validation = dict(values)
                if counts is not None:
                    validation["loss"] = counts.get()[1]
            self.epochs.append(
                EpochRecord(
                    epoch=epoch,
                    train={**dict(stats.metrics), "loss": stats.loss.get()[1]},
                    learning_rate=float(trainer.learning_rate),
                    images_per_second=stats.speed,
                    seconds=stats.seconds,
                    validation=validation,
                    counts=counts.snapshot() if counts is not None and values else None,
                )
            )

        return record

    def keep_counts(self, epochs: set[int]) -> None:
        """Drop the counts of every epoch but `epochs` (those whose model model/ still holds):
        a 1,000-class matrix is 8 MB an epoch, in memory and in the resumable state."""
        for record in self.epochs:
            if record.epoch not in epochs:
                record.counts = None

    def state(self) -> list[dict]:
        return [asdict(record) for record in self.epochs]

    def restore(self, state: list[dict] | None) -> None:
        self.epochs = [EpochRecord(**record) for record in state or []]

    def at(self, epoch: int) -> EpochRecord | None:
        """The record of `epoch` (0-based), if it ran."""
        return next((record for record in self.epochs if record.epoch == epoch), None)
