"""Several hosts' shares of a channel (S3DistributionType) and their batches per epoch:
simulated hosts as threads around the real iterators, and one real 2-host job."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS, Job, balanced_labels, write_rec
from test_distributed import finish, free_port_pair, job_processes, start

from imgcls.config.channels import Channel
from imgcls.config.environment import ChannelConfig
from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.data.loaders import load_channel, validation_iter
from imgcls.log import logger
from imgcls.training.distributed.worker import WorkerContext, check_sharded_sample_count
from imgcls.training.session import loss_weights, train_batches

BATCH = 8
EPOCHS = 3
HOST_TIMEOUT_SECONDS = 60


class Collectives:
    """Stands in for the coordinator: host threads' all-reduces meet at a barrier."""

    def __init__(self, hosts: int) -> None:
        self.barrier = threading.Barrier(hosts, timeout=HOST_TIMEOUT_SECONDS)
        self.contributions: dict[int, list[float]] = {}

    def host(self, index: int) -> HostCollective:
        return HostCollective(self, index)


class HostCollective:
    def __init__(self, shared: Collectives, index: int) -> None:
        self.shared, self.index = shared, index

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        self.shared.contributions[self.index] = list(values)
        self.shared.barrier.wait()
        combine = {"max": max, "sum": sum}[op]
        result = [
            float(combine(column))
            for column in zip(*self.shared.contributions.values(), strict=False)
        ]
        self.shared.barrier.wait()
        return result


def hyperparameters(num_classes: int):
    return parse_hyperparameters(
        {
            **TINY_HYPERPARAMETERS,
            "num_classes": str(num_classes),
            "num_training_samples": "100",
            "mini_batch_size": str(BATCH),
        }
    )


def channel(folder: Path, distribution: str, name: str = "train") -> Channel:
    config = ChannelConfig(name, "application/x-recordio", distribution=distribution)
    return Channel(config, folder)


def rec_labels(folder: Path) -> list[int]:
    """The labels of every record under `folder`, read with MXNet's own reader."""
    labels = []
    for path in sorted(folder.glob("*.rec")):
        reader = mx.recordio.MXRecordIO(str(path), "r")
        while (raw := reader.read()) is not None:
            labels.append(int(mx.recordio.unpack(raw)[0].label))
        reader.close()
    return labels


def run_hosts(target, hosts: int) -> list:
    """target(index) on one thread per host; every one must finish within the bound."""
    results: list = [None] * hosts

    def run(index: int) -> None:
        results[index] = target(index)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(hosts)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HOST_TIMEOUT_SECONDS)
        assert not thread.is_alive(), "a host hangs"
    assert all(r is not None for r in results), "a host failed (see the log)"
    return results


def train_epochs(
    folder: Path, distribution: str, hp, index: int, hosts: int, collectives: Collectives
) -> list[list[list[int]]]:
    """What one host's training iterator yields, epoch by epoch, as the job builds it."""
    data = load_channel(channel(folder, distribution), hp, folder.parent)
    worker = WorkerContext("dist_sync", index, hosts, collectives.host(index))
    batches = train_batches(data, hp, worker)
    epochs = []
    for _ in range(EPOCHS):
        batches.reset()  # as the fit loop does before every epoch
        epochs.append([b.label[0].asnumpy().astype(int).tolist() for b in batches])
    return epochs


def check_passes(stream: list[int], records: list[int]) -> None:
    """The stream is whole passes over `records`, one after another, each a permutation."""
    size = len(records)
    assert len(stream) >= size
    for first in range(0, len(stream) - size + 1, size):
        assert sorted(stream[first : first + size]) == sorted(records)


def host_folders(tmp_path: Path, name: str, distribution: str, counts: list[int]) -> list[Path]:
    """Each host's copy of channel `name`: one .rec of counts[0] records (FullyReplicated), or
    the host's own records in two .rec files, labels numbering all hosts' records apart."""
    folders = []
    for index, count in enumerate(counts):
        folder = tmp_path / f"host{index}" / name
        if distribution == "FullyReplicated":
            write_rec(folder / f"{name}.rec", list(range(count)), seed=1)
        else:
            first = sum(counts[:index])
            labels = list(range(first, first + count))
            write_rec(folder / "a.rec", labels[: count // 2], seed=index)
            write_rec(folder / "b.rec", labels[count // 2 :], seed=index + 10)
        folders.append(folder)
    return folders


def expected_shares(folders: list[Path], distribution: str) -> list[list[int]]:
    """Each host's records, from the .rec files: its own (ShardedByS3Key), or the i-th run of
    ceil(n/hosts) records of the one file every host holds (ImageRecordIter's num_parts)."""
    if distribution == "ShardedByS3Key":
        return [rec_labels(folder) for folder in folders]
    records, hosts = rec_labels(folders[0]), len(folders)
    step = -(-len(records) // hosts)
    return [records[i * step : (i + 1) * step] for i in range(hosts)]


@pytest.mark.parametrize(
    "distribution, counts",
    [("FullyReplicated", [100, 100, 100]), ("ShardedByS3Key", [60, 25, 13])],
)
def test_every_host_runs_the_same_batches_and_reads_its_share_in_whole_passes(
    tmp_path, distribution, counts
) -> None:
    hosts = len(counts)
    folders = host_folders(tmp_path, "train", distribution, counts)
    shares = expected_shares(folders, distribution)
    hp = hyperparameters(100)
    collectives = Collectives(hosts)

    def host(index: int) -> list[list[list[int]]]:
        return train_epochs(folders[index], distribution, hp, index, hosts, collectives)

    yielded = run_hosts(host, hosts)
    # The same number of batches each epoch on every host: one pass over the biggest share.
    batches = {len(epoch) for epochs in yielded for epoch in epochs}
    assert batches == {-(-max(len(share) for share in shares) // BATCH)}
    # The shares cover the channel, each record once; each host reads only its own share.
    assert sorted(x for share in shares for x in share) == list(range(sum(map(len, shares))))
    for epochs, share in zip(yielded, shares, strict=True):
        check_passes([x for epoch in epochs for batch in epoch for x in batch], share)


@pytest.mark.parametrize(
    "distribution, counts",
    [("FullyReplicated", [9, 9, 9, 9]), ("ShardedByS3Key", [20, 3, 11])],
)
def test_validation_counts_every_sample_once_over_all_hosts(tmp_path, distribution, counts) -> None:
    """9 records on 4 hosts: ImageRecordIter's parts hold 3, 3, 3 and none."""
    hp = hyperparameters(100)
    folders = host_folders(tmp_path, "validation", distribution, counts)
    counted = []
    for index, folder in enumerate(folders):
        data = load_channel(channel(folder, distribution, "validation"), hp, folder.parent)
        for batch in validation_iter(data, hp, BATCH, data.part(len(folders), index)):
            valid = BATCH - batch.pad
            counted += batch.label[0].asnumpy()[:valid].astype(int).tolist()
    assert sorted(counted) == sorted(
        x for share in expected_shares(folders, distribution) for x in share
    )
    assert len(counted) == (counts[0] if distribution == "FullyReplicated" else sum(counts))


def sharded_hosts(tmp_path: Path, train_counts: list[int], validation_counts: list[int]):
    hosts = [f"algo-{i + 1}" for i in range(len(train_counts))]
    config = {
        name: {
            "ContentType": "application/x-recordio",
            "TrainingInputMode": "File",
            "S3DistributionType": "ShardedByS3Key",
        }
        for name in ("train", "validation")
    }
    jobs = []
    for index, host in enumerate(hosts):
        job = Job(tmp_path / host)
        job.hyperparameters(
            {**TINY_HYPERPARAMETERS, "num_training_samples": str(sum(train_counts))}
        )
        job.input_data_config(config)
        job.rec_channel("train", balanced_labels(train_counts[index], 4), seed=index)
        job.rec_channel("validation", balanced_labels(validation_counts[index], 4), seed=9)
        (job.config / "resourceconfig.json").write_text(
            json.dumps({"current_host": host, "hosts": hosts})
        )
        jobs.append(job)
    return jobs


def test_a_two_host_sharded_job_with_unequal_shards_finishes(tmp_path) -> None:
    jobs = sharded_hosts(tmp_path, [96, 32], [40, 24])
    outputs = finish(start(jobs, free_port_pair()), timeout=120)
    for job, out in zip(jobs, outputs, strict=True):
        assert "Final trainable parameters digest" in out, out[-3000:]
        assert not (job.base / "output" / "failure").exists()
        # 96 / 16 = 6 batches for the bigger shard; the smaller one's 2 are stretched to 6.
        assert "Training batches per epoch: 6 on every host" in out
        assert "num_training_samples=" not in out  # 96 + 32: the hosts' shards together
    assert not job_processes(jobs)


def test_pipe_mode_on_several_hosts_is_refused_naming_the_setting(tmp_path) -> None:
    job = Job(tmp_path / "algo-1")
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.input_data_config(
        {"train": {"ContentType": "application/x-recordio", "TrainingInputMode": "Pipe"}}
    )
    (job.config / "resourceconfig.json").write_text(
        json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]})
    )
    result = job.train("--dry-run")
    assert result.returncode != 0
    assert job.failure.startswith("ClientError: Pipe mode on several hosts")
    assert "TrainingInputMode" in job.failure and "InstanceCount=1" in job.failure


class Messages(logging.Handler):
    """The messages logged while it is attached."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.mark.parametrize("stated", [128, 100])
def test_num_training_samples_is_checked_against_every_hosts_shard_together(stated) -> None:
    """Sharded hosts hold 96 and 32 images: 128 in all is what num_training_samples counts."""
    collectives, messages = Collectives(2), Messages()
    logger.addHandler(messages)
    try:
        hosts = [
            threading.Thread(
                target=check_sharded_sample_count, args=(stated, count, collectives.host(index))
            )
            for index, count in enumerate([96, 32])
        ]
        for host in hosts:
            host.start()
        for host in hosts:
            host.join(HOST_TIMEOUT_SECONDS)
    finally:
        logger.removeHandler(messages)
    warnings = [line for line in messages.lines if "num_training_samples" in line]
    if stated == 128:
        assert warnings == []
    else:
        expected = "num_training_samples=100 but the hosts' shards of the train channel hold 128"
        assert len(warnings) == 2 and all(w.startswith(expected) for w in warnings), warnings


def test_sharded_hosts_weigh_the_multi_label_loss_by_every_shards_labels_together(
    tmp_path,
) -> None:
    """use_weighted_loss=1 on two ShardedByS3Key hosts: each host's weights are negatives /
    positives counted here over both shards' labels, not over its own shard's."""
    rng = np.random.default_rng(5)
    shards = [(rng.random((40, 4)) < [0.5, 0.2, 0.3, 0.6]).astype(int) for _ in range(2)]
    shards[1][:, 1] = 0  # class 1 is seen only by host 0: its own weights would differ most
    hp = parse_hyperparameters(
        {
            **TINY_HYPERPARAMETERS,
            "num_training_samples": "80",
            "multi_label": "1",
            "use_weighted_loss": "1",
        }
    )
    collectives = Collectives(2)

    def host(index: int) -> np.ndarray:
        folder = tmp_path / f"host{index}" / "train"
        write_rec(folder / "train.rec", shards[index].tolist(), seed=index)
        data = load_channel(channel(folder, "ShardedByS3Key"), hp, folder.parent)
        worker = WorkerContext("dist_sync", index, 2, collectives.host(index))
        return loss_weights(hp, data, worker)()

    everything = np.concatenate(shards)
    positives = everything.sum(axis=0)
    expected = (len(everything) - positives) / positives
    for weights in run_hosts(host, 2):
        np.testing.assert_allclose(weights, expected, rtol=1e-6)
