"""The optimizer's settings: each optimizer gets exactly its own hyperparameters."""

from __future__ import annotations

import mxnet as mx
from mxnet import gluon

from imgcls.config.hyperparameters import Hyperparameters

# Biases and BatchNorm's scale and shift (no_bias_decay), as GluonCV selects them.
NO_DECAY_PATTERN = ".*bias|.*gamma|.*beta"


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


def exclude_from_weight_decay(net: gluon.Block, trainer: gluon.Trainer) -> None:
    """wd_mult 0 for biases and BatchNorm's gamma and beta (no_bias_decay).

    Set on the parameters (what a local update reads) and, by index, in the optimizer's own
    table: a kvstore server receives the optimizer pickled without its parameters.
    """
    exempt = set(net.collect_params(NO_DECAY_PATTERN).keys())
    for name in exempt:
        net.collect_params()[name].wd_mult = 0.0
    # The trainer numbers the parameters its own way; param_dict maps its numbers to them.
    numbered = trainer.optimizer.param_dict.items()
    trainer.optimizer.set_wd_mult({i: 0.0 for i, param in numbered if param.name in exempt})
