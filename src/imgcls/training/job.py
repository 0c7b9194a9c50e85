"""A training job from start to end: configuration, data, this host's training or its part
of a multi-host job, and the dry run's summary."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from imgcls.config.channels import DATA_CHANNELS
from imgcls.config.environment import Paths, pretrained_dir_from_env, read_resource_config
from imgcls.config.hyperparameters import Hyperparameters
from imgcls.config.job import JobConfig, load_job_config
from imgcls.errors import ClientError
from imgcls.gpu import check_gpus
from imgcls.log import logger
from imgcls.model.pretrained import weights_file
from imgcls.mxnet_import import import_mxnet
from imgcls.training.distributed.launch import is_worker_process

if TYPE_CHECKING:
    from imgcls.data.loaders import ChannelData


def run_training(
    paths: Paths, dry_run: bool = False, hand_over: Callable[[Path], None] | None = None
) -> int:
    """`scripts/train`: validate everything, then train (or, with dry_run, summarise).

    On several hosts this process launches the ps-lite roles and a worker, which runs this
    same function again as a worker. `hand_over`, when given, takes the training report's
    folder to draw it elsewhere (training/report/handoff.py). Returns the exit code.
    """
    launcher = _launches_roles(paths, dry_run)
    if not launcher:
        import_mxnet()  # first, the collector paused, operators cached: ~1 s faster
    config = load_job_config(paths)
    check_gpus()
    _check_pretrained_weights(config)
    _check_pipe_hosts(config)
    if launcher:
        return _launch_host(config)
    from imgcls.data.loaders import load_channels

    data = load_channels(paths, config.channels, config.hp)
    if not data["train"].is_pipe:
        _check_training_counts(config.hp, data["train"], config.resources.is_distributed)
    if dry_run:
        _log_summary(config, data)
        return 0
    from imgcls.training.session import train

    train(paths, config, data, hand_over)
    return 0


def _launches_roles(paths: Paths, dry_run: bool) -> bool:
    """True in a multi-host job's launcher, which only starts and watches this host's ps-lite
    roles and worker (they load MXNet) and so never loads it: they no longer wait for its
    import, and it holds 19 MB, not 211 (README, several hosts). An unreadable
    resourceconfig.json is load_job_config's to report."""
    if dry_run or is_worker_process():
        return False
    try:
        return read_resource_config(paths).is_distributed
    except ClientError:
        return False


def _check_pretrained_weights(config: JobConfig) -> None:
    """Fail before reading any data when use_pretrained_model=1 has no weights file here."""
    if config.hp.use_pretrained_model and "model" not in config.channels:
        weights_file(config.hp.num_layers, pretrained_dir_from_env())


def _check_pipe_hosts(config: JobConfig) -> None:
    """Pipe mode streams every host the whole channel (or its whole shard) with no count known
    in advance, so the hosts could neither split it nor agree on batches per epoch: refused."""
    if not config.resources.is_distributed:
        return
    channels = config.channels
    piped = [name for name in DATA_CHANNELS if name in channels and channels[name].config.is_pipe]
    if piped:
        raise ClientError(
            f"Pipe mode on several hosts is not supported (channel(s) {', '.join(piped)}; "
            f"{len(config.resources.hosts)} hosts): set TrainingInputMode (the channels' "
            "InputMode) to File, or train on one instance (InstanceCount=1)."
        )


def _launch_host(config: JobConfig) -> int:
    """This host's part of a multi-host job (kv_store defaults to dist_sync there)."""
    from imgcls.training.distributed.cluster import cluster_from
    from imgcls.training.distributed.launch import run_host

    kv_store = config.hp.kv_store or "dist_sync"
    if config.hp.kv_store is None:
        logger.info(
            "kv_store is not set on %d hosts: using dist_sync.", len(config.resources.hosts)
        )
    cluster = cluster_from(config.resources)
    logger.info(
        "Host %s (#%d of %d), kv_store=%s, scheduler at %s:%d",
        cluster.current_host,
        cluster.host_index,
        len(cluster.hosts),
        kv_store,
        cluster.leader_address,
        cluster.ps_port,
    )
    return run_host(cluster, kv_store)


def _check_training_counts(hp: Hyperparameters, train: ChannelData, several_hosts: bool) -> None:
    """Enough images for a batch; the count num_training_samples states (on several hosts with
    ShardedByS3Key, the hosts' shards together: the worker checks that, session.train)."""
    if train.count < hp.mini_batch_size:
        raise ClientError(
            f"The train channel ({train.folder}) has {train.count} images, "
            f"fewer than mini_batch_size="
            f"{hp.mini_batch_size}. Add images or lower mini_batch_size."
        )
    if not (several_hosts and train.is_sharded):
        from imgcls.training.schedule import check_sample_count

        check_sample_count(hp.num_training_samples, train.count, "the train channel holds")


def _log_summary(config: JobConfig, data: dict[str, ChannelData]) -> None:
    logger.info("Dry run: the configuration is valid.")
    for name, channel in config.channels.items():
        line = (
            f"Channel {name!r}: {channel.config.content_type or 'no content type'}, "
            f"{channel.config.input_mode} mode, {channel.path}"
        )
        if name in data:
            found = data[name]
            line += f": {found.describe()}"
        logger.info(line)
    logger.info(
        "Hosts: %s (this host: %s)",
        ", ".join(config.resources.hosts),
        config.resources.current_host,
    )
