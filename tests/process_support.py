"""`scripts/train` for the suite: a job forked from tests/fork_server.py when it may be.

A job qualifies when the supervising parent would give its child all of SINGLE_HOST_CPU_ENV
(NaiveEngine, one temporary space, glibc's huge pages: one host, no GPU, none of those variables
set; training/supervisor.py decides, as for a real job) and the environment that MXNet and OpenMP
read when they load is the one the server loaded them with.
Any other job, and every test that checks the supervising parent itself (signals, the failure
file of a killed child, the report it draws), runs the real `scripts/train`.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2  # noqa: F401  (see SESSION_ENV)

from imgcls.config.environment import Paths
from imgcls.mxnet_import import import_mxnet
from imgcls.training.supervisor import SINGLE_HOST_CPU_ENV, SUPERVISED_ENV, child_engine

SERVER = Path(__file__).resolve().parent / "fork_server.py"
LOAD_TIME_PREFIXES = ("MXNET_", "OMP_", "KMP_", "LD_", "PYTHON", "SETUPTOOLS_")
# The session's environment once MXNet and OpenCV have loaded (they add KMP_* and
# LD_LIBRARY_PATH as they do); conftest imports this module as pytest starts. The server loads
# with it whenever it starts, not with what a test has patched by then (a sitecustomize on
# PYTHONPATH must reach a real job, never the server).
import_mxnet()
SESSION_ENV = dict(os.environ)


def load_time_env(environ: dict[str, str]) -> dict[str, str]:
    """The variables read when MXNet, OpenMP and Python start, which a fork cannot change."""
    return {k: v for k, v in environ.items() if k.startswith(LOAD_TIME_PREFIXES)}


class ForkServer:
    """The server process, started on first use and stopped when the test session ends."""

    def __init__(self) -> None:
        self.folder = tempfile.TemporaryDirectory(prefix="imgcls-forks-")
        self.socket = str(Path(self.folder.name) / "server")
        env = {**SESSION_ENV, **SINGLE_HOST_CPU_ENV}
        self.env = load_time_env(env)
        self.log = Path(self.folder.name) / "server.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVER), self.socket],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        if self.process.stdout.readline().strip() != "ready":
            raise RuntimeError(f"tests/fork_server.py did not start:\n{self.log.read_text()}")
        atexit.register(self.stop)

    def stop(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.folder.cleanup()

    def run(
        self, argv: list[str], env: dict[str, str], timeout: float
    ) -> subprocess.CompletedProcess:
        """Run `argv` (scripts/train and its arguments) forked, as subprocess.run would."""
        job_env = {**env, SUPERVISED_ENV: "1", **SINGLE_HOST_CPU_ENV}
        with tempfile.TemporaryDirectory(prefix="job-", dir=self.folder.name) as outputs:
            out, err = Path(outputs) / "stdout", Path(outputs) / "stderr"
            request = {
                "argv": argv,
                "env": job_env,
                "cwd": os.getcwd(),
                "stdout": str(out),
                "stderr": str(err),
            }
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(self.socket)
                connection.sendall(json.dumps(request).encode() + b"\n")
                answers = connection.makefile("r")
                pid = json.loads(answers.readline())["pid"]
                connection.settimeout(timeout)
                try:
                    line = answers.readline()
                except TimeoutError:
                    os.kill(pid, signal.SIGKILL)
                    raise subprocess.TimeoutExpired(argv, timeout) from None
                returncode = json.loads(line)["returncode"]
            return subprocess.CompletedProcess(
                argv, returncode, out.read_text(errors="replace"), err.read_text(errors="replace")
            )


_server: ForkServer | None = None


def suite_helpers() -> set[int]:
    """The pids of the suite's own long-lived helper processes (the fork server, once started):
    children of the test process that are no test's leftovers."""
    return {_server.process.pid} if _server is not None else set()


def forkable(base: Path, env: dict[str, str]) -> bool:
    """True when the job at `base` may run forked from the server (see the module's doc)."""
    if SINGLE_HOST_CPU_ENV.keys() & env.keys() or env.get(SUPERVISED_ENV):
        return False
    if child_engine(Paths(base)) != SINGLE_HOST_CPU_ENV:
        return False
    loaded = _server.env if _server else load_time_env(SESSION_ENV)
    return load_time_env(env) == {k: v for k, v in loaded.items() if k not in SINGLE_HOST_CPU_ENV}


def run_train(
    script: Path, base: Path, args: tuple[str, ...], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """`scripts/train args` for the job at `base`: forked when it may be, else the real one."""
    global _server
    if not forkable(base, env):
        return subprocess.run(
            [sys.executable, str(script), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    if _server is None:
        _server = ForkServer()
    return _server.run([str(script), *args], env, timeout)
