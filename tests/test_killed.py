"""A training process killed by a signal, as the out-of-memory killer does: a real SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
from conftest import SCRIPTS, TINY_HYPERPARAMETERS, balanced_labels
from test_distributed import finish, free_port_pair, job_processes, make_hosts, start

OOM_FAILURE = (
    "ClientError: The training {} was killed by SIGKILL, likely by the out-of-memory killer"
)


def read_until(process: subprocess.Popen, text: str) -> str:
    """Its output up to the first line holding `text` (or all of it, if it ends first)."""
    seen = []
    for line in process.stdout:
        seen.append(line)
        if text in line:
            break
    return "".join(seen)


def largest(processes: list[psutil.Process]) -> psutil.Process:
    """The process the out-of-memory killer picks: the one with the most resident memory."""
    return max(processes, key=lambda p: p.memory_info().rss)


def start_long_job(make_job) -> tuple:
    """A 100-epoch job on 64 records, `scripts/train` started in its own process group with
    SIGINT's default action, as a terminal gives it (a shell's background job, such as a CI
    runner's, hands its children SIGINT ignored)."""
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "100"})
    job.rec_channel("train", balanced_labels(64, 4))
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train")],
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return job, process


def test_a_sigkilled_training_process_leaves_a_failure_saying_why_and_how_to_fix(
    make_job,
) -> None:
    job, process = start_long_job(make_job)
    try:
        seen = read_until(process, "Epoch[0] Train-accuracy")
        top = psutil.Process(process.pid)
        largest([top, *top.children(recursive=True)]).send_signal(signal.SIGKILL)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, seen + rest
    failure = job.failure
    assert failure.startswith(OOM_FAILURE.format("process")), failure
    assert "mini_batch_size" in failure and "image_shape" in failure
    assert not job_processes([job])


def test_a_sigkilled_worker_of_a_multi_host_job_fails_its_host_and_the_leader(tmp_path) -> None:
    jobs = make_hosts(tmp_path, 2, kv_store="dist_sync", epochs="50", num_training_samples="512")
    processes = start(jobs, free_port_pair())
    try:
        read_until(processes[0], "Epoch[0] Train-accuracy")
        workers = [
            p for p in job_processes(jobs[1:]) if p.environ().get("IMGCLS_WORKER_OF") == "dist_sync"
        ]
        assert len(workers) == 1, workers
        workers[0].send_signal(signal.SIGKILL)
        outputs = finish(processes, timeout=60)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    assert [p.returncode for p in processes] == [1, 1], outputs
    failure = jobs[1].failure
    assert failure.startswith(OOM_FAILURE.format("worker on algo-2")), failure
    assert "mini_batch_size" in failure and "image_shape" in failure
    leader_failure = jobs[0].failure
    assert "host #1 failed: The training worker on algo-2 was killed by SIGKILL" in leader_failure
    assert not job_processes(jobs)


def test_ctrl_c_stops_training_without_a_failure(make_job) -> None:
    """Ctrl-C (SIGINT to the terminal's process group) is the user's stop, not a crash: exit
    130 as a shell reports it, no output/failure, no memory advice, no process left."""
    job, process = start_long_job(make_job)
    try:
        seen = read_until(process, "Epoch[0] Train-accuracy")
        os.killpg(process.pid, signal.SIGINT)
        rest, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 128 + signal.SIGINT, seen + rest
    assert "stopped on Ctrl-C (SIGINT)" in rest, rest
    assert "memory" not in rest
    assert not (job.base / "output" / "failure").exists()
    assert not job_processes([job])
