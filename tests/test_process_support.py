"""The suite's forked jobs (tests/process_support.py) against the real `scripts/train`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import mxnet as mx
import numpy as np
import process_support
from conftest import SCRIPTS, TINY_HYPERPARAMETERS, Job, balanced_labels

VOLATILE = re.compile(
    r"\[[0-9/: ]+ |\d+\] |Time cost=[0-9.]+|[0-9.]+ samples/sec| in [0-9.]+ s|imgcls-packed-\w+"
)

REPORT = "Training report: "


def tiny_job(base) -> Job:
    job = Job(base).hyperparameters({**TINY_HYPERPARAMETERS, "augmentation_type": "crop"})
    job.rec_channel("train", balanced_labels(64, 4), seed=1)
    job.rec_channel("validation", balanced_labels(32, 4), seed=2)
    return job


def log_lines(job: Job, output: str) -> list[str]:
    """imgcls's log lines without their clock, thread, speed figures and folders."""
    output = output.replace(str(job.base), "BASE")
    return [VOLATILE.sub("", line) for line in output.splitlines() if " INFO " in line]


def test_a_forked_job_trains_what_the_real_scripts_train_trains(tmp_path) -> None:
    forked, real = tiny_job(tmp_path / "forked"), tiny_job(tmp_path / "real")
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(forked.base)}
    assert process_support.forkable(forked.base, env)
    done = forked.train()
    assert process_support._server is not None  # it went through the server
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(real.base)}
    reference = subprocess.run(
        [sys.executable, str(SCRIPTS / "train")], env=env, capture_output=True, text=True
    )
    assert done.returncode == reference.returncode == 0, done.stdout + done.stderr
    assert "MXNet engine: NaiveEngine" in done.stdout
    ours, theirs = log_lines(forked, done.stdout), log_lines(real, reference.stdout)
    # The same lines in the same order, but for the report's: the real job's supervising
    # parent draws the report and logs it last; a forked job, unsupervised, draws its own.
    assert sorted(ours) == sorted(theirs)
    assert [line for line in ours if REPORT not in line] == [
        line for line in theirs if REPORT not in line
    ]
    names = sorted(p.name for p in real.model_dir.iterdir())
    assert sorted(p.name for p in forked.model_dir.iterdir()) == names
    for name in (n for n in names if n.endswith(".params")):
        ours, theirs = (mx.nd.load(str(job.model_dir / name)) for job in (forked, real))
        assert ours.keys() == theirs.keys()
        for key in ours:
            np.testing.assert_array_equal(ours[key].asnumpy(), theirs[key].asnumpy(), key)
    assert (forked.base / "output" / "model.tar.gz").exists()
    assert (forked.base / "output" / "data" / "report.html").exists()


def test_a_failing_forked_job_exits_as_the_real_one_does(tmp_path) -> None:
    job = Job(tmp_path / "job").hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "zero"})
    job.rec_channel("train", balanced_labels(64, 4))
    done = job.train()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)}
    failure = job.failure
    reference = subprocess.run(
        [sys.executable, str(SCRIPTS / "train")], env=env, capture_output=True, text=True
    )
    assert done.returncode == reference.returncode != 0
    assert failure == job.failure and "epochs" in failure


def test_jobs_the_supervisor_would_treat_otherwise_run_the_real_scripts_train(tmp_path) -> None:
    job = tiny_job(tmp_path / "job")
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(job.base)}
    assert process_support.forkable(job.base, env)
    assert not process_support.forkable(job.base, {**env, "MXNET_ENGINE_TYPE": "NaiveEngine"})
    assert not process_support.forkable(job.base, {**env, "OMP_NUM_THREADS": "17"})
    assert not process_support.forkable(job.base, {**env, "IMGCLS_SUPERVISED": "1"})
    hosts = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}
    (job.config / "resourceconfig.json").write_text(json.dumps(hosts))
    assert not process_support.forkable(job.base, env)
