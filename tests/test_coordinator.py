"""The leader's coordinator against hostile peers: raw sockets on 127.0.0.1, in-process."""

from __future__ import annotations

import logging
import os
import pickle
import socket
import struct
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

from imgcls.log import logger
from imgcls.training.distributed import coordinator as coordinator_module
from imgcls.training.distributed.coordinator import Collective, Coordinator

WAIT_SECONDS = 30.0


class Payload:
    """Unpickling this creates a folder: proof that the receiver ran code it was sent."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def records(caplog, monkeypatch) -> Iterator[pytest.LogCaptureFixture]:
    """The imgcls logger's records, once each, whatever its propagation setting."""
    monkeypatch.setattr(logger, "propagate", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="imgcls")
    yield caplog
    logger.removeHandler(caplog.handler)


def wait_until(condition, seconds: float = WAIT_SECONDS) -> bool:
    """True once `condition()` holds, polled every 10 ms; False after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def coordinator_on(port: int, num_hosts: int = 1) -> Coordinator:
    coordinator = Coordinator(port, num_hosts, heartbeat_timeout=10)
    coordinator.start()
    return coordinator


def in_thread(function, *args) -> dict:
    """Run function(*args) in a daemon thread; {'result': ...} once it returned in time."""
    outcome: dict = {}

    def run() -> None:
        try:
            outcome["result"] = function(*args)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT_SECONDS)
    return outcome


def allreduce(port: int, index: int, values: list[float]) -> list[float]:
    return Collective(("127.0.0.1", port), index, timeout=WAIT_SECONDS).allreduce(values)


def send_raw(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection; what comes back until the coordinator closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        return received


def frame(body: bytes) -> bytes:
    return struct.pack("!I", len(body)) + body


def test_a_pickle_sent_with_the_old_public_authkey_is_never_unpickled(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setattr(coordinator_module, "HANDSHAKE_SECONDS", 0.5, raising=False)
    marker = tmp_path / "executed"
    port = free_port()
    coordinator = coordinator_on(port)
    try:

        def attack() -> None:
            with Client(("127.0.0.1", port), authkey=b"imgcls-coordinator") as connection:
                connection.send(Payload(marker))
                connection.recv()

        in_thread(attack)
        assert not marker.exists(), "the coordinator unpickled what a stranger sent"
        assert in_thread(allreduce, port, 0, [1.0, 2.0]).get("result") == [1.0, 2.0]
        assert coordinator.failure is None
    finally:
        coordinator.close()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame(pickle.dumps(("worker", 0))), "not UTF-8 JSON"),
        (b"GET / HTTP/1.1\r\nHost: leader\r\n\r\n", "bound is 4096"),
        (struct.pack("!I", 2**31) + b"{", "bound is 4096"),
        (frame(b"\xff\xfe not text"), "not UTF-8 JSON"),
        (frame(b'["worker", 0]'), "not an object with a string 'type'"),
        (frame(b'{"type": "worker", "index": "0"}'), "did not greet"),
        (frame(b'{"type": "worker", "index": 7}'), "did not greet"),
        (frame(b'{"type": "admin", "index": 0}'), "did not greet"),
    ],
    ids=["pickle", "http", "oversized", "not-utf8", "json-list", "index-str", "index-out", "kind"],
)
def test_anything_but_a_greeting_is_logged_refused_and_closed(
    tmp_path, records, data, reason
) -> None:
    port = free_port()
    coordinator = coordinator_on(port)
    try:
        assert in_thread(send_raw, port, data).get("result") == b""
        refusals = [r.getMessage() for r in records.records if "refused" in r.getMessage()]
        assert len(refusals) == 1 and reason in refusals[0], refusals
        assert in_thread(allreduce, port, 0, [3.0, 4.0]).get("result") == [3.0, 4.0]
        assert coordinator.failure is None
    finally:
        coordinator.close()


def test_a_second_worker_claiming_a_taken_index_is_refused(records) -> None:
    port = free_port()
    coordinator = coordinator_on(port, num_hosts=2)
    try:
        first = Collective(("127.0.0.1", port), 0, timeout=WAIT_SECONDS)
        # Admitted on the coordinator's own thread: the second claim must come after it.
        assert wait_until(lambda: 0 in coordinator._workers)
        greeting = frame(b'{"type": "worker", "index": 0}')
        assert in_thread(send_raw, port, greeting).get("result") == b""
        assert any("connected already" in r.getMessage() for r in records.records)
        other: dict = {}
        thread = threading.Thread(target=lambda: other.update(r=allreduce(port, 1, [10.0])))
        thread.start()
        assert in_thread(first.allreduce, [5.0]).get("result") == [15.0]
        thread.join(WAIT_SECONDS)
        assert other.get("r") == [15.0]
    finally:
        coordinator.close()


def test_an_all_reduce_larger_than_one_message_is_summed_in_rounds() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.random(250_000).tolist(), rng.random(250_000).tolist()]
    port = free_port()
    coordinator = coordinator_on(port, num_hosts=2)
    try:
        results = [{}, {}]
        threads = [
            threading.Thread(target=lambda i=i: results[i].update(r=allreduce(port, i, parts[i])))
            for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        expected = np.add(parts[0], parts[1])
        for result in results:
            np.testing.assert_allclose(result["r"], expected, rtol=0, atol=1e-12)
        assert coordinator.failure is None
    finally:
        coordinator.close()
