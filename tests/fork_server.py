"""A process that has imported MXNet and imgcls once, and forks a training job per request.

Most of the suite's jobs train for about a second; starting each as `scripts/train` costs two
interpreters and MXNet's import (~3 s, single-threaded) first. This server pays that once: it
imports what the job's child imports, with the environment the supervising parent gives a
single-host CPU job (NaiveEngine, one temporary space, glibc's huge pages, the same OpenMP
setting), and forks a process per request that runs `imgcls train` as that child does
(tests/process_support.py says which jobs qualify).
A forked job is a process of its own: its own environment, working folder, output files, exit
status and signals. It is started without the supervising parent, whose behaviour the tests
that need it check through the real `scripts/train`.

    python tests/fork_server.py SOCKET

Protocol, one connection per job: the client sends one JSON line {"argv", "env", "cwd",
"stdout", "stderr"}; the server answers {"pid": N} once the job runs and {"returncode": N}
(negative: the signal that ended it, as subprocess gives it) once it has ended.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import sys
import traceback
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"


def preload() -> None:
    """What a training job's process imports, imported once."""
    sys.path.insert(0, str(SOURCE))
    from imgcls.mxnet_import import import_mxnet

    import_mxnet()
    import imgcls.cli
    import imgcls.training.job
    import imgcls.training.report.plots
    import imgcls.training.session  # noqa: F401


def run_job(request: dict) -> None:
    """In the forked process: become the job's process, run it, and end with its exit code."""
    from imgcls.cli import main
    from imgcls.system import exit_now

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = request["argv"]
    code = 1
    try:
        code = main(["train", *request["argv"][1:]])
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()
    exit_now(code)


def serve(path: str) -> None:
    """Accept requests until stdin closes (the test session ended), reaping finished jobs."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    print("ready", flush=True)
    running: dict[int, socket.socket] = {}
    while True:
        readable, _, _ = select.select([listener, sys.stdin], [], [], 0.05)
        if sys.stdin in readable and not sys.stdin.readline():
            return
        if listener in readable:
            connection, _ = listener.accept()
            request = json.loads(connection.makefile("r").readline())
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                run_job(request)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            running[pid] = connection
        reap(running)


def reap(running: dict[int, socket.socket]) -> None:
    """Tell each finished job's client how it ended."""
    while running:
        pid, status = os.waitpid(-1, os.WNOHANG)
        if pid == 0:
            return
        connection = running.pop(pid, None)
        if connection is not None:
            answer = {"returncode": os.waitstatus_to_exitcode(status)}
            connection.sendall(json.dumps(answer).encode() + b"\n")
            connection.close()


if __name__ == "__main__":
    preload()
    serve(sys.argv[1])
