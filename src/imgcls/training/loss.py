"""The training loss: softmax cross-entropy, or per-class sigmoid cross-entropy (multi-label)."""

from __future__ import annotations

from collections.abc import Callable

import mxnet as mx
import numpy as np
from mxnet import gluon


def loss_function(
    multi_label: bool,
    positive_weights: Callable[[], np.ndarray] | None = None,
    dense_targets: bool = False,
) -> gluon.loss.Loss:
    """Softmax cross-entropy (of class indices, or of per-class targets when `dense_targets`);
    multi-label: sigmoid cross-entropy per class, with each class's positives weighted by
    `positive_weights()` when given (use_weighted_loss)."""
    if not multi_label:
        return gluon.loss.SoftmaxCrossEntropyLoss(sparse_label=not dense_targets)
    if positive_weights is None:
        return gluon.loss.SigmoidBinaryCrossEntropyLoss()
    return PositiveWeightedSigmoidLoss(positive_weights)


class PositiveWeightedSigmoidLoss(gluon.loss.SigmoidBinaryCrossEntropyLoss):
    """Sigmoid cross-entropy whose positive terms are weighted per class (`pos_weight`)."""

    def __init__(self, positive_weights: Callable[[], np.ndarray]) -> None:
        super().__init__()
        self._positive_weights = positive_weights

    def forward(self, pred: mx.nd.NDArray, label: mx.nd.NDArray) -> mx.nd.NDArray:
        weights = mx.nd.array(self._positive_weights(), ctx=pred.context).reshape((1, -1))
        return super().forward(pred, label, None, weights)
