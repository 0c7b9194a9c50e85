"""Training on this host: devices, network, trainer, callbacks, resume, and the final model."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon

from imgcls.config.environment import Paths, runs_on_managed_platform
from imgcls.config.hyperparameters import Hyperparameters
from imgcls.config.job import JobConfig
from imgcls.data.class_folders import read_class_names
from imgcls.data.in_memory import InMemoryBatches
from imgcls.data.loaders import ChannelData, local_batches, train_iter, validation_iter
from imgcls.errors import TrainingInterrupted
from imgcls.log import logger
from imgcls.model import archive, artifact, pretrained
from imgcls.model.networks import MODEL_ZOO, build_network
from imgcls.training.checkpoints import ModelCheckpoints
from imgcls.training.distributed.worker import (
    WorkerContext,
    aggregate_metrics,
    agree_on_batches,
    check_sharded_sample_count,
    parameters_digest,
    pull_current_weights,
    shards_positive_weights,
    worker_context,
)
from imgcls.training.early_stopping import EarlyStopping
from imgcls.training.endpoint import after_validation, endpoint_check, served_shorter_side
from imgcls.training.loop import EpochHooks, Learner, StopRequest, fit
from imgcls.training.loss import loss_function
from imgcls.training.metrics import classification_metrics
from imgcls.training.optimizer import exclude_from_weight_decay, optimizer_params
from imgcls.training.report.confusion import ValidationCounts
from imgcls.training.report.history import History
from imgcls.training.report.writer import ReportInputs, model_epochs, write_report_safely
from imgcls.training.resume import ResumeState
from imgcls.training.schedule import continue_schedule, schedule, updates_per_epoch
from imgcls.training.supervisor import running_engine
from imgcls.training.targets import soft_targets

FINGERPRINT_KEYS = ("num_layers", "num_classes", "image_shape", "multi_label", "optimizer")


def devices(num_gpus: int) -> list[mx.Context]:
    """Every GPU when there are any, else the CPU."""
    return [mx.gpu(i) for i in range(num_gpus)] or [mx.cpu()]


def build_learner(
    hp: Hyperparameters,
    contexts: list[mx.Context],
    model_channel: Path | None,
    worker: WorkerContext | None = None,
    positive_weights: Callable[[], np.ndarray] | None = None,
) -> Learner:
    """The network (initialised, or from a previous model), its trainer and its loss
    (multi-label: positives weighted by `positive_weights()` when given)."""
    if model_channel is not None:
        net = artifact.training_network(model_channel, _checked_settings(hp), contexts)
        logger.info("Incremental training: weights loaded from %s", model_channel)
        if net.structure != MODEL_ZOO:
            logger.info("The model's network, kept: %s", net.structure)
        if hp.use_pretrained_model:
            logger.info("use_pretrained_model=1 is ignored: the model channel's weights win.")
    else:
        net = build_network(hp.num_layers, hp.num_classes, hp.image_shape)
        xavier = mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2)
        net.initialize(xavier, ctx=contexts)
        if hp.use_pretrained_model:
            pretrained.load_imagenet_features(net, hp.num_layers)
    if hp.precision_dtype == "float16":
        net.cast("float16")
    if worker is not None:
        kvstore = mx.kv.create(worker.kv_store)
    else:
        kvstore = "device" if len(contexts) > 1 else None
    net.hybridize(static_alloc=True, static_shape=True)
    lr_schedule = schedule(hp, job_updates_per_epoch(hp, worker))
    trainer = gluon.Trainer(
        net.collect_params(), hp.optimizer, optimizer_params(hp, lr_schedule), kvstore=kvstore
    )
    if hp.no_bias_decay:
        exclude_from_weight_decay(net, trainer)
    targets = soft_targets(hp)
    loss = loss_function(hp.multi_label, positive_weights, dense_targets=targets is not None)
    return Learner(
        net,
        trainer,
        loss,
        contexts,
        hp.precision_dtype,
        hosts_per_update=hosts_per_update(worker),
        targets=targets,
    )


def _checked_settings(hp: Hyperparameters) -> dict:
    """What a model channel's model must share with the job."""
    return {
        "num_layers": hp.num_layers,
        "image_shape": hp.image_shape,
        "num_classes": hp.num_classes,
    }


def hosts_per_update(worker: WorkerContext | None) -> int:
    """dist_sync sums every host's batch into one update; dist_async applies each host's alone."""
    return worker.num_hosts if worker is not None and worker.synchronous else 1


def update_batch(mini_batch_size: int, worker: WorkerContext | None) -> int:
    """Samples per optimizer update."""
    return mini_batch_size * hosts_per_update(worker)


def job_updates_per_epoch(hp: Hyperparameters, worker: WorkerContext | None) -> int:
    """Optimizer updates per epoch, as the learning-rate schedule counts them."""
    return updates_per_epoch(hp.num_training_samples, update_batch(hp.mini_batch_size, worker))


def job_fingerprint(settings: dict, net: gluon.HybridBlock) -> dict:
    """What a resume state must share with this job: its settings and its network's structure."""
    fingerprint = {key: settings[key] for key in FINGERPRINT_KEYS}
    return {**fingerprint, "network": dataclasses.asdict(net.structure)}


def train(
    paths: Paths,
    config: JobConfig,
    data: dict[str, ChannelData],
    hand_over: Callable[[Path], None] | None = None,
) -> None:
    """Train, keep the model/ files the checkpoint policy asks for, and pack model.tar.gz;
    the report is drawn here, or by `hand_over` (training/report/handoff.py)."""
    hp = config.hp
    logger.info("MXNet engine: %s", running_engine())
    serving_side = served_shorter_side(hp, data["train"])
    settings = {
        **hp.as_dict(),
        **artifact.preprocessing_metadata(hp.inference_preprocessing, serving_side),
    }
    classes = read_class_names(config.channels["train"].path, hp.num_classes)
    metadata = {**settings, "classes": classes}  # class names when the job has classes.json
    worker = worker_context()
    if worker is not None and data["train"].is_sharded:
        check_sharded_sample_count(hp.num_training_samples, data["train"].count, worker.collective)
    # First, so that records held in memory decode (data/in_memory.py) while the network builds.
    batches = train_batches(data["train"], hp, worker, gpus=mx.context.num_gpus())
    contexts = devices(mx.context.num_gpus())
    model_channel = config.channels.get("model")
    weights = loss_weights(hp, data["train"], worker)
    learner = build_learner(
        hp, contexts, model_channel.path if model_channel else None, worker, weights
    )
    writes_model = worker is None or worker.is_leader
    checkpoints = ModelCheckpoints(
        export=lambda epoch: artifact.export_model(
            learner.net, paths.model_dir, epoch, hp.image_shape, hp.multi_label, metadata
        ),
        remove=lambda epoch: artifact.remove_params(paths.model_dir, epoch),
        frequency=hp.checkpoint_frequency,
        enabled=writes_model,
    )
    early = (
        EarlyStopping(
            hp.early_stopping_min_epochs, hp.early_stopping_patience, hp.early_stopping_tolerance
        )
        if hp.early_stopping
        else None
    )
    resume = ResumeState(
        paths.checkpoints_dir,
        paths.model_dir,
        job_fingerprint(settings, learner.net),
        optimizer_states=worker is None,
    )
    history = History()
    first_epoch = restore(
        resume, learner, checkpoints, early, job_updates_per_epoch(hp, worker), history
    )
    if isinstance(batches, InMemoryBatches):
        replay_random_draws(batches, learner, first_epoch, hp.mini_batch_size)
    if first_epoch >= hp.epochs:
        logger.info("The resumed job had finished training: nothing is retrained.")

    def progress(next_epoch: int) -> dict:
        history.keep_counts(set(model_epochs(paths.model_dir)))
        return {
            "next_epoch": next_epoch,
            "checkpoints": checkpoints.state(),
            "early_stopping": early.state() if early else None,
            "report": history.state(),
        }

    def after_epoch(epoch: int, accuracy: float | None) -> bool:
        done = epoch + 1
        stop = bool(early and accuracy is not None and early.should_stop(done, accuracy))
        finished = stop or done == hp.epochs
        exported = checkpoints.on_epoch_end(done, accuracy, is_last=finished)
        if stop:
            logger.info(
                "Early stopping after epoch %d: no improvement for %d epochs.",
                epoch,
                early.epochs_without_improvement,
            )
        # A finished job's state says so (a resume trains nothing more) and needs no optimizer.
        next_epoch = hp.epochs if finished else done
        # Flushed to disk while the next epoch trains (or the archive packs): resume.py.
        resume.save(
            learner.net,
            learner.trainer,
            progress(next_epoch),
            with_optimizer=not finished,
            background=True,
            exported=exported,
        )
        return stop

    validation = data.get("validation")
    counts = (
        ValidationCounts(hp.num_classes, hp.multi_label, loss_function(hp.multi_label, weights))
        if validation
        else None
    )
    aggregate = (lambda metric: aggregate_metrics(metric, worker.collective)) if worker else None
    check = endpoint_check(
        hp, validation, serving_side, _part(validation, worker) if validation else (1, 0)
    )
    hooks = EpochHooks(
        validation_batches=(
            (lambda: validation_iter(validation, hp, hp.mini_batch_size, _part(validation, worker)))
            if validation
            else None
        ),
        after_epoch=after_epoch,
        aggregate=aggregate,
        after_validation=after_validation(check, learner, aggregate) if check else None,
        validation_counts=counts,
        record=history.recorder(learner.trainer, counts),
        after_training=(
            (lambda: pull_current_weights(learner.trainer, worker.collective))
            if worker is not None and not worker.synchronous
            else None
        ),
    )
    stop = StopRequest()
    stop.install()
    try:
        fit(
            learner,
            batches,
            lambda: classification_metrics(hp.top_k, hp.multi_label, hp.num_classes),
            hooks,
            range(first_epoch, hp.epochs),
            stop,
        )
    except TrainingInterrupted as interrupted:
        resume.save(learner.net, learner.trainer, progress(interrupted.epoch))
        logger.info(
            "Resumable state saved to %s; a new run resumes at epoch %d.",
            paths.checkpoints_dir,
            interrupted.epoch,
        )
        raise
    finally:
        resume.wait()  # a failing job leaves its last epoch's state whole on disk too
    if worker is not None:
        logger.info("Final trainable parameters digest: %s", parameters_digest(learner.net))
    inputs = ReportInputs(settings, classes, hp.num_classes, worker.num_hosts if worker else 1)
    _finish(
        paths,
        resume,
        writes_model,
        lambda: write_report_safely(
            paths.output_data_dir, history, paths.model_dir, inputs, hand_over
        ),
    )


def replay_random_draws(
    batches: InMemoryBatches, learner: Learner, epochs: int, batch_size: int
) -> None:
    """A resumed job whose records are held in memory: draw the crops, the record order and
    mixup's pairs of the `epochs` already trained, so that the next epochs are the ones the
    uninterrupted job would have trained."""
    batches.skip_epochs(epochs)
    if learner.targets is not None:
        learner.targets.skip_batches(epochs * batches.batches, batch_size)


def loss_weights(
    hp: Hyperparameters, train: ChannelData, worker: WorkerContext | None
) -> Callable[[], np.ndarray] | None:
    """use_weighted_loss=1: the positives' weights of the train channel (on several hosts with
    ShardedByS3Key, of every host's shard together); else None."""
    if not hp.use_weighted_loss:
        return None
    if worker is None or not train.is_sharded:
        return train.positive_weights
    shared = shards_positive_weights(train.count, train.class_counts, worker.collective)
    return lambda: shared


def _part(data: ChannelData, worker: WorkerContext | None) -> tuple[int, int]:
    return data.part(worker.num_hosts, worker.host_index) if worker else (1, 0)


def train_batches(
    data: ChannelData, hp: Hyperparameters, worker: WorkerContext | None, gpus: int = 0
) -> mx.io.DataIter:
    """This host's training batches; on several hosts, as many per epoch as the host with the
    most batches per pass runs (the others read part of their records twice)."""
    parts = _part(data, worker)
    batches = None
    if worker is not None and not data.is_pipe:
        local = local_batches(data, hp.mini_batch_size, parts)
        batches = agree_on_batches(local, worker.collective)
    return train_iter(data, hp, hp.mini_batch_size, parts, batches, gpus)


def restore(
    resume: ResumeState,
    learner: Learner,
    checkpoints: ModelCheckpoints,
    early: EarlyStopping | None,
    epoch_updates: int,
    history: History | None = None,
) -> int:
    """Continue an interrupted job when checkpoints/ holds its state; the first epoch to run.

    The learning-rate schedule goes on from that epoch's first update, on one host or several.
    """
    progress = resume.load(learner.net, learner.trainer, learner.contexts)
    if progress is None:
        return 0
    continue_schedule(learner.trainer.optimizer, progress["next_epoch"] * epoch_updates)
    for key, value in progress["checkpoints"].items():
        setattr(checkpoints, key, value)
    if early and progress["early_stopping"]:
        for key, value in progress["early_stopping"].items():
            setattr(early, key, value)
    if history is not None:
        history.restore(progress.get("report"))
    return progress["next_epoch"]


def _finish(
    paths: Paths, resume: ResumeState, writes_model: bool, write_report: Callable[[], None]
) -> None:
    """The model's host writes the report while model.tar.gz (outside SageMaker) is packed on
    a second thread, whose deflate runs without the GIL; then the resumable state goes."""
    if writes_model:
        with ThreadPoolExecutor(max_workers=1) as pool:
            packing = None
            if not runs_on_managed_platform():
                packing = pool.submit(archive.pack_model, paths.model_dir, paths.local_model_tar)
            write_report()
            if packing is not None:
                packing.result()
                logger.info("Model archive for local use: %s", paths.local_model_tar)
    resume.clear()
