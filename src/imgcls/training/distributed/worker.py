"""What a training worker of a multi-host job knows and does beyond single-host training."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass

import mxnet as mx
import numpy as np

from imgcls.data.labels import log_positive_weights, positive_weights
from imgcls.log import logger
from imgcls.training.distributed.coordinator import Collective
from imgcls.training.distributed.launch import HOST_INDEX_ENV, WORKER_ENV
from imgcls.training.schedule import check_sample_count

CONNECT_TIMEOUT_SECONDS = 120.0


@dataclass
class WorkerContext:
    """This worker's place in the job and its channel to the other hosts."""

    kv_store: str
    host_index: int
    num_hosts: int
    collective: Collective

    @property
    def is_leader(self) -> bool:
        """Only hosts[0] writes model/ and model.tar.gz."""
        return self.host_index == 0

    @property
    def synchronous(self) -> bool:
        return self.kv_store == "dist_sync"


def worker_context(environ: Mapping[str, str] = os.environ) -> WorkerContext | None:
    """The context when this process was started by the launcher as a worker, else None."""
    kv_store = environ.get(WORKER_ENV)
    if not kv_store:
        return None
    address = (environ["DMLC_PS_ROOT_URI"], int(environ["DMLC_PS_ROOT_PORT"]) + 1)
    index = int(environ[HOST_INDEX_ENV])
    return WorkerContext(
        kv_store=kv_store,
        host_index=index,
        num_hosts=int(environ["DMLC_NUM_WORKER"]),
        collective=Collective(address, index, CONNECT_TIMEOUT_SECONDS),
    )


def aggregate_metrics(metric: mx.metric.EvalMetric, collective: Collective) -> None:
    """Sum every metric's counters over all workers, in place (also a metric's own
    `counters()`, such as mean average precision's per-class histograms)."""
    children = metric.metrics if isinstance(metric, mx.metric.CompositeEvalMetric) else [metric]
    for child in children:
        extra = child.counters() if hasattr(child, "counters") else np.zeros(0)
        total = collective.allreduce([child.sum_metric, child.num_inst, *extra.tolist()])
        child.sum_metric, child.num_inst = total[0], int(total[1])
        if extra.size:
            child.set_counters(np.asarray(total[2:]))


def agree_on_batches(batches: int, collective: Collective) -> int:
    """The training batches per epoch every host runs: the most any host needs for one pass
    over its records. dist_sync pairs the hosts' pushes one to one, so all must run as many;
    the maximum drops no record (hosts with fewer read some of theirs twice)."""
    agreed = int(collective.allreduce([batches], "max")[0])
    logger.info(
        "Training batches per epoch: %d on every host (%d for one pass over this host's records)",
        agreed,
        batches,
    )
    return agreed


def check_sharded_sample_count(
    num_training_samples: int, count: int, collective: Collective
) -> None:
    """ShardedByS3Key: num_training_samples counts every host's shard; this host holds `count`."""
    total = int(collective.allreduce([count])[0])
    check_sample_count(num_training_samples, total, "the hosts' shards of the train channel hold")


def shards_positive_weights(
    count: int, class_counts: np.ndarray, collective: Collective
) -> np.ndarray:
    """ShardedByS3Key, use_weighted_loss=1: each class's positive weight from every host's
    shard together (this host holds `count` images, `class_counts` positives per class), so
    that every host weighs its loss alike; logged."""
    totals = collective.allreduce([count, *class_counts.tolist()])
    total = int(totals[0])
    weights = positive_weights(np.asarray(totals[1:]), total)
    log_positive_weights(weights, f"the {total} images of 'train' on all hosts")
    return weights


def pull_current_weights(trainer: mx.gluon.Trainer, collective: Collective) -> None:
    """dist_async, at an epoch's end: once every host has finished the epoch (the collective),
    read the parameter servers' weights into this host's network. Each host otherwise holds
    what its own last pull returned, so its validation and the model would miss the updates
    other hosts pushed after it."""
    collective.allreduce([0.0])
    # Gluon's Trainer has no public pull: its kvstore keys each parameter by `_param2idx`.
    for parameter in trainer._params:
        if parameter.grad_req != "null":
            key = trainer._param2idx[parameter.name]
            trainer._kvstore.pull(key, out=parameter.list_data(), priority=-key)
    mx.nd.waitall()


def parameters_digest(net: mx.gluon.Block) -> str:
    """A SHA-256 of the trainable parameters: equal on all workers after dist_sync training.

    BatchNorm's running statistics are not trained, so each worker keeps its own (as in any
    MXNet kvstore job); the leader's go into the model.
    """
    digest = hashlib.sha256()
    for name, parameter in sorted(net.collect_params().items()):
        if parameter.grad_req == "null":
            continue
        digest.update(name.encode())
        digest.update(parameter.data(parameter.list_ctx()[0]).asnumpy().tobytes())
    return digest.hexdigest()
