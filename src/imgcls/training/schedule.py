"""The learning-rate schedule, counted in optimizer updates as MXNet's schedulers count."""

from __future__ import annotations

import math

import mxnet as mx


def lr_scheduler(
    steps: tuple[int, ...], factor: float, base_lr: float, updates_per_epoch: int
) -> mx.lr_scheduler.LRScheduler | None:
    """LR x factor after each step epoch, counted in updates (MXNet counts them from 1)."""
    if not steps:
        return None
    return mx.lr_scheduler.MultiFactorScheduler(
        step=[epoch * updates_per_epoch for epoch in steps], factor=factor, base_lr=base_lr
    )


def updates_per_epoch(num_training_samples: int, global_batch: int) -> int:
    """Iterations per epoch as the built-in algorithm derives them: from num_training_samples."""
    return max(1, math.ceil(num_training_samples / global_batch))
