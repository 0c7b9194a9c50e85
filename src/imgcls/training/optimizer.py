"""The optimizer's settings: each optimizer gets exactly its own hyperparameters."""

from __future__ import annotations

import mxnet as mx

from imgcls.config.hyperparameters import Hyperparameters


def optimizer_params(hp: Hyperparameters, lr_schedule: mx.lr_scheduler.LRScheduler | None) -> dict:
    """Each optimizer gets exactly its own hyperparameters."""
    params: dict = {"learning_rate": hp.learning_rate}
    if lr_schedule is not None:
        params["lr_scheduler"] = lr_schedule
    if hp.precision_dtype == "float16":
        params["multi_precision"] = True
    if hp.optimizer in ("sgd", "nag"):
        params.update(momentum=hp.momentum, wd=hp.weight_decay)
    elif hp.optimizer == "adam":
        params.update(beta1=hp.beta_1, beta2=hp.beta_2, epsilon=hp.eps)
    elif hp.optimizer == "rmsprop":
        params.update(gamma1=hp.gamma, epsilon=hp.eps)
    return params
