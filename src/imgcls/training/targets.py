"""Soft training targets (imgcls extensions): label smoothing and mixup.

Both turn the iterator's labels into dense per-class targets for the loss; the metrics keep
the hard labels. Mixup draws λ = max(b, 1 − b), b ~ Beta(α, α), once per batch and mixes the
batch with a shuffled copy of itself; as the pair order is random, taking the larger weight
changes nothing but makes each example's own label the dominant one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mxnet as mx
import numpy as np

from imgcls.config.hyperparameters import Hyperparameters


@dataclass
class SoftTargets:
    """(batch, labels) -> (possibly mixed batch, dense targets), per the two extensions."""

    num_classes: int
    multi_label: bool
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))

    def __call__(
        self, data: mx.nd.NDArray, label: mx.nd.NDArray
    ) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
        targets = self.dense(label)
        if self.mixup_alpha > 0:
            beta = self.rng.beta(self.mixup_alpha, self.mixup_alpha)
            data, targets = mix(
                data, targets, max(beta, 1 - beta), self.rng.permutation(data.shape[0])
            )
        return data, self.smooth(targets)

    def skip_batches(self, count: int, batch_size: int) -> None:
        """Draw what `count` batches of `batch_size` draw, mixing nothing (a resumed job)."""
        if self.mixup_alpha > 0:
            for _ in range(count):
                self.rng.beta(self.mixup_alpha, self.mixup_alpha)
                self.rng.permutation(batch_size)

    def dense(self, label: mx.nd.NDArray) -> mx.nd.NDArray:
        """One-hot rows of class indices (multi-label labels already are multi-hot)."""
        if self.multi_label:
            return label.astype("float32")
        return mx.nd.one_hot(label, self.num_classes)

    def smooth(self, targets: mx.nd.NDArray) -> mx.nd.NDArray:
        """(1 − ε)·y + ε/K; multi-label, each class a two-way choice: (1 − ε)·y + ε/2."""
        if not self.label_smoothing:
            return targets
        spread = 2 if self.multi_label else self.num_classes
        return targets * (1 - self.label_smoothing) + self.label_smoothing / spread


def mix(
    data: mx.nd.NDArray, targets: mx.nd.NDArray, lam: float, order: np.ndarray
) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """λ·x + (1 − λ)·x[order], and the targets alike."""
    index = mx.nd.array(order, ctx=data.context)
    mixed = data * lam + data.take(index) * (1 - lam)
    index = index.as_in_context(targets.context)
    return mixed, targets * lam + targets.take(index) * (1 - lam)


def soft_targets(hp: Hyperparameters) -> SoftTargets | None:
    """The targets the hyperparameters ask for; None when neither extension is on."""
    if not hp.label_smoothing and not hp.mixup_alpha:
        return None
    return SoftTargets(hp.num_classes, hp.multi_label, hp.label_smoothing, hp.mixup_alpha)
