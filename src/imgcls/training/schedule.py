"""The learning-rate schedule, counted in optimizer updates as MXNet's schedulers count.

An update numbered k (from 1) receives `scheduler(k)`. `lr_scheduler=step` is the built-in's
MultiFactorScheduler; `cosine` is MXNet's CosineScheduler (imgcls extension); both take
MXNet's own linear warm-up from 0 (`warmup_epochs`).
"""

from __future__ import annotations

import math

import mxnet as mx

from imgcls.config.hyperparameters import Hyperparameters
from imgcls.log import logger


def lr_scheduler(
    steps: tuple[int, ...],
    factor: float,
    base_lr: float,
    updates_per_epoch: int,
    warmup_epochs: int = 0,
) -> mx.lr_scheduler.LRScheduler | None:
    """LR x factor after each step epoch, counted in updates (MXNet counts them from 1);
    after a linear warm-up of `warmup_epochs` when given."""
    warmup = warmup_epochs * updates_per_epoch
    if steps:
        return mx.lr_scheduler.MultiFactorScheduler(
            step=[epoch * updates_per_epoch for epoch in steps],
            factor=factor,
            base_lr=base_lr,
            warmup_steps=warmup,
        )
    if warmup:
        # A factor of 1 never changes the rate: only the warm-up remains.
        return mx.lr_scheduler.FactorScheduler(
            step=warmup, factor=1.0, base_lr=base_lr, warmup_steps=warmup
        )
    return None


def cosine_scheduler(
    base_lr: float, epochs: int, updates_per_epoch: int, warmup_epochs: int = 0
) -> mx.lr_scheduler.CosineScheduler:
    """After the warm-up, a half cosine from base_lr to 0 over the remaining updates."""
    return mx.lr_scheduler.CosineScheduler(
        max_update=epochs * updates_per_epoch,
        base_lr=base_lr,
        final_lr=0.0,
        warmup_steps=warmup_epochs * updates_per_epoch,
    )


def schedule(hp: Hyperparameters, updates_per_epoch: int) -> mx.lr_scheduler.LRScheduler | None:
    """The scheduler `lr_scheduler` asks for; None for a constant rate."""
    if hp.lr_scheduler == "cosine":
        return cosine_scheduler(hp.learning_rate, hp.epochs, updates_per_epoch, hp.warmup_epochs)
    return lr_scheduler(
        hp.lr_scheduler_step,
        hp.lr_scheduler_factor,
        hp.learning_rate,
        updates_per_epoch,
        hp.warmup_epochs,
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


def check_sample_count(num_training_samples: int, count: int, holder: str) -> None:
    """Warn when the training images (`holder` holds `count`) are not num_training_samples,
    which the schedule counts its epochs' updates from."""
    if count != num_training_samples:
        logger.warning(
            "num_training_samples=%d but %s %d images: the learning-rate schedule follows "
            "num_training_samples. Set it to %d to silence this warning.",
            num_training_samples,
            holder,
            count,
            count,
        )
