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


def continue_schedule(optimizer: mx.optimizer.Optimizer, updates_done: int) -> None:
    """Have `optimizer` count `updates_done` updates as done, so its schedule goes on from there.

    A resumed multi-host job's parameter servers get a fresh optimizer (counting from update 0)
    when the trainer first steps; a single-host job restores its count, which includes the part
    of an interrupted epoch that is run again. Call before the trainer's first step.
    """
    optimizer.begin_num_update = optimizer.num_update = updates_done
    # MXNet also counts updates per parameter and device (Adam's bias correction reads them);
    # emptied, they start again from begin_num_update. There is no public setter.
    for counts in optimizer._all_index_update_counts.values():
        counts.clear()


def updates_per_epoch(num_training_samples: int, global_batch: int) -> int:
    """Iterations per epoch as the built-in algorithm derives them: from num_training_samples."""
    return max(1, math.ceil(num_training_samples / global_batch))
