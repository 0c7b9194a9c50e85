"""`train` runs the job in a child process that it watches.

A process that a signal ends (the out-of-memory killer's SIGKILL) cannot write output/failure
itself; its parent can. The parent stays small: it never imports MXNet.

The parent also picks MXNet's engine for the child (read when MXNet loads, so it must be set
before): on one host without GPUs, NaiveEngine, which runs each operator in the thread that
calls it: on this 2-core machine ResNet-20 jobs (28 and 32 px) trained 1.2-1.3x faster than on
MXNet's default threaded engine, with the same results (README, performance). Several hosts
(ps-lite's servers and workers) and GPU hosts (whose devices and copies run in parallel) keep
MXNet's default; an explicit MXNET_ENGINE_TYPE always wins. With NaiveEngine the child also
gets one CPU temporary space (MXNET_CPU_TEMP_COPY=1; an explicit value wins): MXNet's default
keeps 4 and hands them out in turn, and each grows to the largest request it serves, so a
ResNet-18 at 224 px paged in 4 x 196 MB over its first 5 steps (0.2 s each) where one operator
at a time needs one. It also gets glibc's transparent huge pages for malloc
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1, glibc 2.35 and later; an explicit GLIBC_TUNABLES wins):
MXNet's buffers then take 2 MiB pages where the kernel allows them (THP "madvise"): a ResNet-18
job at 224 px took 72,000 page faults where it took 490,000, and 35.5 s where it took 36.2 s
(README, performance).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from imgcls.config.environment import Paths, read_resource_config
from imgcls.errors import ClientError, ImgclsError
from imgcls.failure import killed_by_signal, report_failure
from imgcls.gpu import has_gpu_devices
from imgcls.log import logger
from imgcls.system import child_env, die_with_parent
from imgcls.training.report.handoff import ReportDrawer

SUPERVISED_ENV = "IMGCLS_SUPERVISED"
ENGINE_ENV = "MXNET_ENGINE_TYPE"
# What a single-host CPU job's child gets, each variable unless the environment sets it.
SINGLE_HOST_CPU_ENV = {
    ENGINE_ENV: "NaiveEngine",
    "MXNET_CPU_TEMP_COPY": "1",
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}
MXNET_DEFAULT_ENGINE = "ThreadedEnginePerDevice"


def is_supervised(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a process that a supervising parent (or a host's launcher) watches."""
    return bool(environ.get(SUPERVISED_ENV))


class SigtermForwarder:
    """Passes SIGTERM (SageMaker's stop) on to the child that `target()` returns."""

    def __init__(self, target: Callable[[], subprocess.Popen | None]):
        self.target = target
        self.forwarded = False
        signal.signal(signal.SIGTERM, self._forward)

    def _forward(self, signum: int, frame: object) -> None:
        child = self.target()
        if child is not None and child.poll() is None:
            self.forwarded = True
            child.send_signal(signal.SIGTERM)


def engine_env(
    hosts: int, gpu_devices: bool, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """SINGLE_HOST_CPU_ENV, less what the environment sets, for one host without GPUs; nothing
    (MXNet's defaults) otherwise, or when the environment already sets an engine."""
    if ENGINE_ENV in environ or hosts > 1 or gpu_devices:
        return {}
    return {name: value for name, value in SINGLE_HOST_CPU_ENV.items() if name not in environ}


def running_engine(environ: Mapping[str, str] = os.environ) -> str:
    """The engine MXNet runs in this process (it reads MXNET_ENGINE_TYPE when it loads)."""
    return environ.get(ENGINE_ENV, MXNET_DEFAULT_ENGINE)


def child_engine(paths: Paths) -> dict[str, str]:
    """`engine_env` for the job at `paths`; nothing when resourceconfig.json is unreadable
    (the child then reports why)."""
    try:
        hosts = len(read_resource_config(paths).hosts)
    except ClientError:
        return {}
    return engine_env(hosts, has_gpu_devices())


def signal_death(code: int, stopping: bool, process: str) -> ImgclsError | None:
    """The failure to report when return code `code` says a signal ended `process`; None
    when it exited, when Ctrl-C (SIGINT) ended it, or when SIGTERM ended it during a stop
    that was asked for."""
    if code >= 0 or code == -signal.SIGINT or (stopping and code == -signal.SIGTERM):
        return None
    return killed_by_signal(process, -code)


def stop_name(signum: int) -> str:
    """How the log names the stop that `signum` asked for."""
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"


def exit_status(code: int) -> int:
    """A child's return code as this process's exit status (a signal N gives 128 + N)."""
    return 128 - code if code < 0 else code


def _wait(child: subprocess.Popen) -> int:
    """The child's return code. Ctrl-C reaches the child too (one process group): wait on."""
    while True:
        try:
            return child.wait()
        except KeyboardInterrupt:
            continue


def supervise(
    argv: Sequence[str], failure_file: Path, extra_env: Mapping[str, str] | None = None
) -> int:
    """Run `imgcls <argv>` in a child (with `extra_env` added to its environment), drawing
    the training report it hands over; its exit status, or 1 and output/failure when a signal
    ended it."""
    drawer = ReportDrawer()
    child = subprocess.Popen(
        [sys.executable, "-m", "imgcls.cli", *argv],
        env=child_env({**(extra_env or {}), **drawer.child_env(), SUPERVISED_ENV: "1"}),
        pass_fds=drawer.child_fds,
        preexec_fn=die_with_parent,
    )
    drawer.start()
    forwarder = SigtermForwarder(lambda: child)
    code = _wait(child)
    drawer.finish()
    death = signal_death(code, forwarder.forwarded, "The training process")
    if death is not None:
        return report_failure(death, failure_file)
    if code < 0:
        logger.info("The training process stopped on %s.", stop_name(-code))
    return exit_status(code)
