"""imgcls's side channel between hosts: membership (who is alive) and small all-reduces.

MXNet's kvstore moves the weights; it has no way to sum a few metric counters across workers
or to notice that a host died (its workers then block forever). This channel does both: the
leader host runs a `Coordinator`; every host's launcher is a `Member` and every worker a
`Collective` client. A member that vanishes aborts the whole job within `heartbeat_timeout`.

Messages are plain JSON (see messages.py): a connection that sends anything else is refused.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

from imgcls.errors import AlgorithmError
from imgcls.log import logger
from imgcls.training.distributed.messages import (
    CHUNK_VALUES,
    CONTROL_MAX_BYTES,
    Channel,
    ProtocolError,
    is_index,
    numbers,
)

HEARTBEAT_SECONDS = 2.0
CONNECT_PAUSE_SECONDS = 0.5
HANDSHAKE_SECONDS = 10.0
REDUCE_OPS = ("sum", "max")
REASON_MAX_CHARS = 500


def connect(address: tuple[str, int], deadline: float, timeout: float | None = None) -> Channel:
    """Connect to the coordinator, retrying until `deadline` (time.monotonic())."""
    while True:
        try:
            sock = socket.create_connection(address, timeout=HANDSHAKE_SECONDS)
            return Channel(sock, timeout)
        except OSError as exc:
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
        self.listener = socket.create_server(("0.0.0.0", port))
        self.failure: str | None = None
        self.finished: set[int] = set()
        self._lock = threading.Lock()
        self._members: dict[int, Channel] = {}
        self._workers: dict[int, Channel] = {}
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
            channels = [*self._members.values(), *self._workers.values()]
        for channel in channels:
            channel.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for channel in [*self._members.values(), *self._workers.values()]:
            channel.close()

    def _accept(self) -> None:
        while self.failure is None:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            channel = Channel(sock, HANDSHAKE_SECONDS)
            threading.Thread(target=self._admit, args=(channel,), daemon=True).start()

    def _admit(self, channel: Channel) -> None:
        """Read the greeting and serve the connection; refuse anything that is not one."""
        try:
            hello = channel.receive(CONTROL_MAX_BYTES)
            kind, index = hello["type"], hello.get("index")
            if kind not in ("member", "worker") or not is_index(index, self.num_hosts):
                raise ProtocolError("did not greet as a member or worker of this job")
            registry = self._members if kind == "member" else self._workers
            with self._lock:
                if index in registry:
                    raise ProtocolError(f"greeted as {kind} #{index}, which is connected already")
                registry[index] = channel
        except (ProtocolError, EOFError, OSError) as exc:
            refuse(channel, exc)
            return
        if kind == "member":
            self._serve_member(index, channel)
        else:
            self._serve_worker(index, channel)

    def _beat(self) -> None:
        """Tell every member the leader lives, so a dead leader is noticed without a FIN."""
        while self.failure is None and not self.all_finished:
            for index, channel in list(self._members.items()):
                try:
                    channel.send({"type": "alive"})
                except OSError:
                    if index not in self.finished:
                        self.abort(f"lost contact with host #{index}")
            time.sleep(HEARTBEAT_SECONDS)

    def _serve_member(self, index: int, channel: Channel) -> None:
        channel.set_timeout(self.heartbeat_timeout)
        while True:
            try:
                message = channel.receive(CONTROL_MAX_BYTES)
                kind = message["type"]
                if kind not in ("alive", "done", "failed"):
                    raise ProtocolError(f"sent an unknown message type {kind[:40]!r}")
            except (OSError, EOFError, ProtocolError) as exc:
                if isinstance(exc, ProtocolError):
                    refuse(channel, exc)
                if index not in self.finished:
                    self.abort(f"host #{index} stopped (no heartbeat, or its process died)")
                return
            if kind == "done":
                self.finished.add(index)
            elif kind == "failed":
                reason = str(message.get("reason"))[:REASON_MAX_CHARS]
                self.abort(f"host #{index} failed: {reason}")

    def _serve_worker(self, index: int, channel: Channel) -> None:
        channel.set_timeout(None)
        while True:
            try:
                number, op, values = reduce_request(channel.receive())
            except (OSError, EOFError):
                return
            except ProtocolError as exc:
                refuse(channel, exc)
                self.abort(f"host #{index}'s worker sent an invalid message ({exc})")
                return
            self._contribute(index, number, op, values)

    def _contribute(self, index: int, number: int, op: str, values: list[float]) -> None:
        with self._lock:
            contributions = self._rounds.setdefault(number, {})
            contributions[index] = (op, values)
            if len(contributions) < self.num_hosts:
                return
            del self._rounds[number]
            workers = list(self._workers.values())
        if len({(o, len(v)) for o, v in contributions.values()}) > 1:
            self.abort(f"all-reduce round {number}: the hosts sent different operations or sizes")
            return
        result = _reduce(op, [v for _, v in contributions.values()])
        for channel in workers:
            try:
                channel.send({"type": "result", "round": number, "values": result})
            except OSError:
                logger.warning("Could not send all-reduce round %d to %s.", number, channel.peer)


def refuse(channel: Channel, reason: Exception) -> None:
    """Log and close a connection that broke the protocol."""
    logger.warning("Coordinator refused the connection from %s: %s", channel.peer, reason)
    channel.close()


def reduce_request(message: dict) -> tuple[int, str, list[float]]:
    """(round, op, values) of a worker's reduce message, or ProtocolError."""
    number, op = message.get("round"), message.get("op")
    if message["type"] != "reduce" or type(number) is not int or op not in REDUCE_OPS:
        raise ProtocolError("sent a message that is not a reduce request")
    return number, op, numbers(message.get("values"))


def _reduce(op: str, contributions: list[list[float]]) -> list[float]:
    combine: Callable[..., float] = max if op == "max" else lambda *v: float(sum(v))
    return [combine(*column) for column in zip(*contributions, strict=True)]


class Member:
    """Runs in every host's launcher: heartbeats to the coordinator, and hears of failures."""

    def __init__(self, address: tuple[str, int], index: int, heartbeat_timeout: float):
        self.heartbeat_timeout = heartbeat_timeout
        deadline = time.monotonic() + heartbeat_timeout
        self.channel = connect(address, deadline, heartbeat_timeout)
        self.channel.send({"type": "member", "index": index})
        self.failure: str | None = None
        self.done = False

    def start(self) -> None:
        threading.Thread(target=self._beat, daemon=True).start()
        threading.Thread(target=self._listen, daemon=True).start()

    def report(self, kind: str, **fields: str) -> None:
        self.channel.send({"type": kind, **fields})

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
                if self.channel.receive(CONTROL_MAX_BYTES)["type"] != "alive":
                    raise ProtocolError("the leader sent an unknown message")
            except (OSError, EOFError, ProtocolError):
                self._fail("the leader host stopped or aborted the job")
                return

    def _fail(self, reason: str) -> None:
        if not self.done and self.failure is None:
            self.failure = reason


class Collective:
    """Runs in each worker: all-reduce of numbers across hosts (sum or max)."""

    def __init__(self, address: tuple[str, int], index: int, timeout: float):
        self.channel = connect(address, time.monotonic() + timeout)
        self.channel.send({"type": "worker", "index": index})
        self._round = 0

    def allreduce(self, values: list[float], op: str = "sum") -> list[float]:
        """In rounds of at most CHUNK_VALUES numbers, so that every message stays bounded."""
        values = [float(v) for v in values]
        result: list[float] = []
        for start in range(0, max(1, len(values)), CHUNK_VALUES):
            result += self._round_trip(values[start : start + CHUNK_VALUES], op)
        return result

    def _round_trip(self, values: list[float], op: str) -> list[float]:
        self._round += 1
        request = {"type": "reduce", "round": self._round, "op": op, "values": values}
        try:
            self.channel.send(request)
            answer = self.channel.receive()
            if answer["type"] != "result" or answer.get("round") != self._round:
                raise ProtocolError(f"answered round {answer.get('round')!r}")
            return numbers(answer.get("values"))
        except (OSError, EOFError):
            raise AlgorithmError("The leader host aborted the job (see its log).") from None
        except ProtocolError as exc:
            raise AlgorithmError(f"All-reduce round {self._round}: the leader {exc}.") from None
