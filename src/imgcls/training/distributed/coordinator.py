"""imgcls's side channel between hosts: membership (who is alive) and small all-reduces.

MXNet's kvstore moves the weights; it has no way to sum a few metric counters across workers
or to notice that a host died (its workers then block forever). This channel does both: the
leader host runs a `Coordinator`; every host's launcher is a `Member` and every worker a
`Collective` client. A member that vanishes aborts the whole job within `heartbeat_timeout`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Client, Connection, Listener

from imgcls.errors import AlgorithmError
from imgcls.log import logger

AUTHKEY = b"imgcls-coordinator"
HEARTBEAT_SECONDS = 2.0
CONNECT_PAUSE_SECONDS = 0.5


def connect(address: tuple[str, int], deadline: float) -> Connection:
    """Connect to the coordinator, retrying until `deadline` (time.monotonic())."""
    while True:
        try:
            return Client(address, authkey=AUTHKEY)
        except (ConnectionRefusedError, FileNotFoundError, OSError) as exc:
            if time.monotonic() >= deadline:
                raise AlgorithmError(
                    f"Could not reach the leader host's coordinator at {address[0]}:{address[1]}"
                    f": {exc}."
                ) from None
            time.sleep(CONNECT_PAUSE_SECONDS)


class Coordinator:
    """Runs on the leader host: tracks members and answers all-reduce rounds."""

    def __init__(self, port: int, num_hosts: int, heartbeat_timeout: float):
        self.num_hosts = num_hosts
        self.heartbeat_timeout = heartbeat_timeout
        self.listener = Listener(("0.0.0.0", port), authkey=AUTHKEY)
        self.failure: str | None = None
        self.finished: set[int] = set()
        self._lock = threading.Lock()
        self._members: dict[int, Connection] = {}
        self._workers: dict[int, Connection] = {}
        self._rounds: dict[int, dict[int, tuple[str, list[float]]]] = {}

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._beat, daemon=True).start()

    @property
    def all_finished(self) -> bool:
        return len(self.finished) == self.num_hosts

    def abort(self, reason: str) -> None:
        """Record the first failure and drop every connection: the other hosts then stop."""
        with self._lock:
            if self.failure is None and not self.all_finished:
                self.failure = reason
                logger.error("Distributed job aborted: %s", reason)
            connections = [*self._members.values(), *self._workers.values()]
        for connection in connections:
            connection.close()

    def close(self) -> None:
        self.listener.close()
        for connection in [*self._members.values(), *self._workers.values()]:
            connection.close()

    def _accept(self) -> None:
        while self.failure is None:
            try:
                connection = self.listener.accept()
                kind, index = connection.recv()
            except (OSError, EOFError):
                return
            target = self._serve_member if kind == "member" else self._serve_worker
            registry = self._members if kind == "member" else self._workers
            with self._lock:
                registry[index] = connection
            threading.Thread(target=target, args=(index, connection), daemon=True).start()

    def _beat(self) -> None:
        """Tell every member the leader lives, so a dead leader is noticed without a FIN."""
        while self.failure is None and not self.all_finished:
            for index, connection in list(self._members.items()):
                try:
                    connection.send(("alive",))
                except OSError:
                    if index not in self.finished:
                        self.abort(f"lost contact with host #{index}")
            time.sleep(HEARTBEAT_SECONDS)

    def _serve_member(self, index: int, connection: Connection) -> None:
        while True:
            try:
                if not connection.poll(self.heartbeat_timeout):
                    raise TimeoutError
                message = connection.recv()
            except (OSError, EOFError, TimeoutError):
                if index not in self.finished:
                    self.abort(f"host #{index} stopped (no heartbeat, or its process died)")
                return
            if message[0] == "done":
                self.finished.add(index)
            elif message[0] == "failed":
                self.abort(f"host #{index} failed: {message[1]}")

    def _serve_worker(self, index: int, connection: Connection) -> None:
        while True:
            try:
                _, number, op, values = connection.recv()
            except (OSError, EOFError):
                return
            self._contribute(index, number, op, values)

    def _contribute(self, index: int, number: int, op: str, values: list[float]) -> None:
        with self._lock:
            contributions = self._rounds.setdefault(number, {})
            contributions[index] = (op, values)
            if len(contributions) < self.num_hosts:
                return
            del self._rounds[number]
            result = _reduce(op, [v for _, v in contributions.values()])
            workers = list(self._workers.values())
        for connection in workers:
            connection.send(("result", number, result))


def _reduce(op: str, contributions: list[list[float]]) -> list[float]:
    combine: Callable[..., float] = max if op == "max" else lambda *v: float(sum(v))
    return [combine(*column) for column in zip(*contributions, strict=True)]


class Member:
    """Runs in every host's launcher: heartbeats to the coordinator, and hears of failures."""

    def __init__(self, address: tuple[str, int], index: int, heartbeat_timeout: float):
        self.heartbeat_timeout = heartbeat_timeout
        self.connection = connect(address, time.monotonic() + heartbeat_timeout)
        self.connection.send(("member", index))
        self.failure: str | None = None
        self.done = False
        self._send_lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._beat, daemon=True).start()
        threading.Thread(target=self._listen, daemon=True).start()

    def report(self, *message: object) -> None:
        with self._send_lock:
            self.connection.send(message)

    def finish(self) -> None:
        self.done = True
        self.report("done")

    def _beat(self) -> None:
        while not self.done and self.failure is None:
            try:
                self.report("alive")
            except OSError:
                self._fail("lost contact with the leader host")
                return
            time.sleep(HEARTBEAT_SECONDS)

    def _listen(self) -> None:
        while not self.done:
            try:
                if not self.connection.poll(self.heartbeat_timeout):
                    raise TimeoutError
                self.connection.recv()
            except (OSError, EOFError, TimeoutError):
                self._fail("the leader host stopped or aborted the job")
                return

    def _fail(self, reason: str) -> None:
        if not self.done and self.failure is None:
            self.failure = reason


class Collective:
    """Runs in each worker: all-reduce of a few numbers across hosts (sum or max)."""

    def __init__(self, address: tuple[str, int], index: int, timeout: float):
        self.connection = connect(address, time.monotonic() + timeout)
        self.connection.send(("worker", index))
        self._round = 0

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        self._round += 1
        try:
            self.connection.send(("reduce", self._round, op, list(map(float, values))))
            _, number, result = self.connection.recv()
        except (OSError, EOFError):
            raise AlgorithmError("The leader host aborted the job (see its log).") from None
        if number != self._round:
            raise AlgorithmError(f"All-reduce round {number} answered for {self._round}.")
        return result
