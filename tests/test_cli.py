"""scripts/train --dry-run and `imgcls hyperparameters`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_HYPERPARAMETERS, balanced_labels

from imgcls.cli import main
from imgcls.config.environment import paths_from_env
from imgcls.gpu import has_gpu_devices
from imgcls.system import child_env
from imgcls.training.distributed.launch import WORKER_ENV
from imgcls.training.supervisor import (
    SINGLE_HOST_CPU_ENV,
    SUPERVISED_ENV,
    child_engine,
    engine_env,
)

# Written out, not read from the supervisor: what a one-host CPU job's child is given.
ONE_CPU_HOST = {
    "MXNET_ENGINE_TYPE": "NaiveEngine",
    "MXNET_CPU_TEMP_COPY": "1",
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Touches 256 MiB from glibc's malloc (as MXNet's CPU buffers are; numpy asks the kernel for
# huge pages itself); prints the minor page faults that took.
FAULT_PROBE = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 256 << 20
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(libc.malloc(size), 1, size)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_dry_run_accepts_a_valid_job_and_summarises_it(make_job) -> None:
    job = make_job()
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.rec_channel("train", balanced_labels(64, 4))
    result = job.train("--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Dry run: the configuration is valid." in result.stdout
    assert "Channel 'train': application/x-recordio, File mode" in result.stdout
    assert "1 file(s), 64 images" in result.stdout
    assert not job.model_dir.exists()


def test_dry_run_writes_every_violation_to_the_failure_file(make_job) -> None:
    job = make_job()
    job.hyperparameters(
        {
            **TINY_HYPERPARAMETERS,
            "epochs": "0",
            "optimizer": "sgdd",
            "learning_rate": "2",
            "mini_batch_sise": "8",
            "sagemaker_program": "ignored",
        }
    )
    job.rec_channel("train", balanced_labels(64, 4))
    result = job.train("--dry-run")
    assert result.returncode == 1
    failure = job.failure
    assert failure.startswith("ClientError: 4 invalid hyperparameter(s):")
    for name, value in [("epochs", "'0'"), ("optimizer", "'sgdd'"), ("learning_rate", "'2'")]:
        assert name in failure and value in failure
    assert "did you mean 'mini_batch_size'" in failure
    assert "sagemaker_program" not in failure
    assert failure in result.stdout  # the same text in the log


def test_malformed_hyperparameters_file_is_named_with_its_position(make_job) -> None:
    job = make_job()
    (job.config / "hyperparameters.json").write_text('{"num_classes": "4",\n"epochs": }')
    job.rec_channel("train", balanced_labels(64, 4))
    result = job.train("--dry-run")
    assert result.returncode == 1
    assert job.failure.startswith("ClientError: ")
    assert "hyperparameters.json is not valid JSON" in job.failure and "line 2" in job.failure


def test_missing_config_folder_fails_with_the_fix(tmp_path) -> None:
    from conftest import run_script

    result = run_script("train", tmp_path, "--dry-run")
    assert result.returncode == 1
    failure = (tmp_path / "output" / "failure").read_text()
    assert "config folder" in failure and "SAGEMAKER_BASE_DIR" in failure


def test_hyperparameters_command_prints_the_table_and_the_schema(capsys) -> None:
    assert main(["hyperparameters"]) == 0
    table = capsys.readouterr().out
    assert "| num_classes |" in table and "| early_stopping_tolerance |" in table
    assert main(["hyperparameters", "--json-schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["required"]) == {"num_classes", "num_training_samples"}


TEARDOWN_PROBE = """
import atexit, runpy, sys
class Probe:
    def __del__(self):
        sys.stderr.write("TEARDOWN")
probe = Probe()
atexit.register(lambda: sys.stderr.write("ATEXIT"))
runpy.run_module("imgcls.cli", run_name="__main__")
"""


@pytest.mark.parametrize(
    ("extra", "torn_down"),
    [({}, True), ({SUPERVISED_ENV: "1"}, False), ({SUPERVISED_ENV: "1", WORKER_ENV: "h"}, True)],
    ids=["own process", "single-host job's child", "multi-host worker"],
)
def test_only_the_single_host_child_skips_the_teardown_with_its_output_whole(
    extra: dict[str, str], torn_down: bool
) -> None:
    """The child ends without tearing its objects down, yet runs its atexit handlers and loses
    nothing it printed, even through a pipe; a worker must close its kvstore link, so it
    tears down as usual."""
    env = {k: v for k, v in child_env({}).items() if k not in (SUPERVISED_ENV, WORKER_ENV)}
    done = subprocess.run(
        [sys.executable, "-c", TEARDOWN_PROBE, "hyperparameters", "--json-schema"],
        env={**env, **extra},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["properties"]["num_classes"]
    assert ("TEARDOWN" in done.stderr) == torn_down
    assert "ATEXIT" in done.stderr


@pytest.mark.parametrize(
    ("hosts", "gpu_devices", "environ", "expected"),
    [
        (1, False, {}, ONE_CPU_HOST),
        (
            1,
            False,
            {"MXNET_CPU_TEMP_COPY": "3", "GLIBC_TUNABLES": "glibc.malloc.arena_max=2"},
            {"MXNET_ENGINE_TYPE": "NaiveEngine"},
        ),
        (2, False, {}, {}),  # ps-lite's servers and workers keep MXNet's default
        (1, True, {}, {}),  # GPU devices and copies run in parallel on the threaded engine
        (1, False, {"MXNET_ENGINE_TYPE": "ThreadedEngine"}, {}),  # the user's choice stays
    ],
)
def test_the_child_gets_the_naive_engine_one_temp_space_and_huge_pages_only_on_one_cpu_host(
    hosts, gpu_devices, environ, expected
) -> None:
    assert engine_env(hosts, gpu_devices, environ) == expected


def test_child_engine_reads_the_hosts_of_resourceconfig(make_job, monkeypatch) -> None:
    monkeypatch.delenv("MXNET_ENGINE_TYPE", raising=False)
    monkeypatch.delenv("MXNET_CPU_TEMP_COPY", raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.setattr("imgcls.training.supervisor.has_gpu_devices", lambda: False)
    job = make_job()
    paths = paths_from_env({"SAGEMAKER_BASE_DIR": str(job.base)})
    assert child_engine(paths) == ONE_CPU_HOST  # no file: one host
    resources = job.config / "resourceconfig.json"
    resources.write_text(json.dumps({"current_host": "algo-1", "hosts": ["algo-1", "algo-2"]}))
    assert child_engine(paths) == {}
    resources.write_text("{")
    assert child_engine(paths) == {}  # the child names the broken file


def _minor_faults(tunables: str | None) -> int:
    env = {k: v for k, v in child_env({}).items() if k != "GLIBC_TUNABLES"}
    if tunables is not None:
        env["GLIBC_TUNABLES"] = tunables
    probe = [sys.executable, "-c", FAULT_PROBE]
    done = subprocess.run(probe, env=env, capture_output=True, text=True, check=True)
    return int(done.stdout)


@pytest.mark.skipif(
    "[madvise]" not in (THP_MODE.read_text() if THP_MODE.exists() else ""),
    reason="the kernel's transparent huge pages are not in 'madvise' mode: malloc's request is "
    "then granted always or never, whatever the tunable says",
)
def test_the_huge_page_tunable_takes_a_large_buffer_in_2_mib_pages() -> None:
    """256 MiB touched in 4 KiB pages is 65,536 faults; in 2 MiB pages, a few hundred. glibc
    ignores a tunable it does not know, so a misspelt name shows here as no change."""
    with_tunable = _minor_faults(SINGLE_HOST_CPU_ENV["GLIBC_TUNABLES"])
    without = _minor_faults(None)
    assert without > 60_000
    assert with_tunable < without / 10


def test_gpu_devices_are_the_numbered_nvidia_device_files(tmp_path) -> None:
    (tmp_path / "nvidiactl").touch()
    (tmp_path / "nvidia-uvm").touch()
    assert not has_gpu_devices(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert has_gpu_devices(tmp_path)
