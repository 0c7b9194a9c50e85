"""Start this host's ps-lite roles and its training worker, watch them, and tear them down.

The pattern of SageMaker's MXNet containers: a scheduler on hosts[0], one server and one worker
on every host. MXNet's own tools/launch.py is not used: it is broken on Python >= 3.9 and can
orphan a scheduler. Every child dies with its launcher (PR_SET_PDEATHSIG), so no process of the
job survives any outcome.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

from imgcls.errors import AlgorithmError
from imgcls.log import logger
from imgcls.system import child_env, die_with_parent
from imgcls.training.distributed.cluster import Cluster
from imgcls.training.distributed.coordinator import Coordinator, Member
from imgcls.training.supervisor import (
    SUPERVISED_ENV,
    SigtermForwarder,
    exit_status,
    signal_death,
)

POLL_SECONDS = 0.2
GRACE_SECONDS = 10.0
WORKER_ENV = "IMGCLS_WORKER_OF"
HOST_INDEX_ENV = "IMGCLS_HOST_INDEX"
# One OpenMP thread for the scheduler and server: with as many threads as cores they fight the
# worker's threads, and MXNet's OpenMP slows down several-fold when cores are oversubscribed.
ROLE_THREADS = "1"


def is_worker_process() -> bool:
    """True in the training worker that `start_worker` launched."""
    return bool(os.environ.get(WORKER_ENV))


def _spawn(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    logger.info("Starting %s", name)
    return subprocess.Popen(command, env=child_env(env), preexec_fn=die_with_parent)


@dataclass
class HostProcesses:
    """This host's children: the ps-lite roles and the worker."""

    roles: dict[str, subprocess.Popen] = field(default_factory=dict)
    worker: subprocess.Popen | None = None

    def all(self) -> list[subprocess.Popen]:
        return [*self.roles.values(), *([self.worker] if self.worker else [])]

    def failed_role(self) -> str | None:
        """A ps-lite role that exited before the worker finished is a failure."""
        for name, process in self.roles.items():
            code = process.poll()
            if code is not None and code != 0:
                return f"the ps-lite {name} exited with code {code}"
        return None

    def stop(self) -> None:
        """SIGTERM everything still running, then SIGKILL what ignores it."""
        for process in self.all():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + GRACE_SECONDS
        for process in self.all():
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_roles(cluster: Cluster) -> HostProcesses:
    """The scheduler (leader only) and this host's server: `import mxnet` with DMLC_ROLE set."""
    processes = HostProcesses()
    roles = ["scheduler", "server"] if cluster.is_leader else ["server"]
    for role in roles:
        command = [sys.executable, "-c", "import mxnet"]
        env = {**cluster.role_env(role), "OMP_NUM_THREADS": ROLE_THREADS}
        processes.roles[role] = _spawn(f"ps-lite {role}", command, env)
    return processes


def start_worker(cluster: Cluster, kv_store: str) -> subprocess.Popen:
    """The training worker: this same `train` command, in worker mode."""
    env = {
        **cluster.role_env("worker"),
        WORKER_ENV: kv_store,
        HOST_INDEX_ENV: str(cluster.host_index),
        SUPERVISED_ENV: "1",
    }
    command = [sys.executable, "-m", "imgcls.cli", "train"]
    return _spawn(f"worker on {cluster.current_host}", command, env)


def run_host(cluster: Cluster, kv_store: str) -> int:
    """Run this host's share of the job; the worker's exit code, or 1 on a cluster failure."""
    coordinator = None
    if cluster.is_leader:
        coordinator = Coordinator(
            cluster.coordinator_port, len(cluster.hosts), cluster.heartbeat_timeout
        )
        coordinator.start()
    processes = start_roles(cluster)
    member = Member(
        (cluster.leader_address, cluster.coordinator_port),
        cluster.host_index,
        cluster.heartbeat_timeout,
    )
    member.start()
    processes.worker = start_worker(cluster, kv_store)
    stop = SigtermForwarder(lambda: processes.worker)
    try:
        code = _watch(processes, member, coordinator)
        if code == 0:
            member.finish()
            _wait_for_peers(coordinator)
            return 0
        return _worker_failed(cluster, member, code, stop.forwarded)
    finally:
        processes.stop()
        if coordinator is not None:
            coordinator.close()


def _watch(processes: HostProcesses, member: Member, coordinator: Coordinator | None) -> int:
    """Until the worker ends: a dead role, peer or leader fails this host too (on the leader,
    the coordinator's reason first: its abort also cuts the leader's own member)."""
    while True:
        code = processes.worker.poll()
        if code is not None:
            return code
        reason = (
            processes.failed_role()
            or (coordinator.failure if coordinator else None)
            or member.failure
        )
        if reason:
            raise AlgorithmError(f"Distributed training stopped: {reason}.")
        time.sleep(POLL_SECONDS)


def _wait_for_peers(coordinator: Coordinator | None) -> None:
    """The leader keeps the scheduler up until every host's worker has finished."""
    while coordinator is not None and not coordinator.all_finished:
        if coordinator.failure:
            raise AlgorithmError(f"Distributed training stopped: {coordinator.failure}.")
        time.sleep(POLL_SECONDS)


def _worker_failed(cluster: Cluster, member: Member, code: int, stopping: bool) -> int:
    """Tell the leader; raise what a signal that ended the worker means, else its exit status."""
    death = signal_death(code, stopping, f"The training worker on {cluster.current_host}")
    reason = str(death) if death else f"its worker exited with code {code}"
    try:
        member.report("failed", reason=reason)
    except OSError:
        logger.warning("Could not tell the leader host that this worker failed.")
    if death is not None:
        raise death
    return exit_status(code)
