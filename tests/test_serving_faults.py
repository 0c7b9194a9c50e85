"""Faults against a real `scripts/serve` (gunicorn, real processes): requests slower than the
timeout, a worker killed, then the whole server stopped with requests in flight."""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from serving_support import Direct, assert_same, encode_jpeg, export_tiny_model, random_image
from test_serving import Server

IMAGES = [encode_jpeg(random_image(seed, 20, 24)) for seed in range(4)]
TIMEOUT = 4  # SAGEMAKER_MODEL_SERVER_TIMEOUT: short, yet longer than a worker takes to load


def workers_of(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children(recursive=True)


def wait_for_new_workers(server: Server, gone: set[int], deadline: float = 60) -> None:
    """Until two workers none of which is in `gone` have loaded their model and /ping is 200."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        pids = {p.pid for p in workers_of(server)}
        loaded = server.log.count(" ready: epoch") >= 2 + len(gone)
        replaced = len(pids) == 2 and not pids & gone and loaded
        if replaced and requests.get(f"{server.url}/ping", timeout=5).status_code == 200:
            return
        time.sleep(0.2)
    raise AssertionError(f"workers {gone} not replaced after {deadline} s:\n{server.log}")


def stalled_upload(server: Server) -> socket.socket:
    """A client that declares a 1000-byte image, sends 10 bytes of it and waits: the request
    holds its worker for as long as the client likes."""
    client = socket.create_connection(("127.0.0.1", server.port), timeout=60)
    head = "POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
    client.sendall(f"{head}Content-Length: 1000\r\n\r\n".encode() + IMAGES[0][:10])
    return client


def outcome(server: Server, data: bytes) -> tuple[str, object]:
    """("answer", status, body) when the server answered whole; ("refused", error) otherwise."""
    try:
        answer = server.post(data, "image/jpeg")
        return "answer", (answer.status_code, answer.json())
    except requests.ConnectionError as exc:
        return "refused", type(exc).__name__


@pytest.fixture
def server(tmp_path: Path):
    export_tiny_model(tmp_path / "model", seed=4)
    server = Server(
        tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="2", SAGEMAKER_MODEL_SERVER_TIMEOUT=str(TIMEOUT)
    )
    try:
        server.wait_ready(2)
        yield server
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)


def test_slow_and_killed_workers_are_replaced_and_sigterm_drains_requests_in_flight(
    server: Server, tmp_path: Path
) -> None:
    direct = Direct(tmp_path / "model")
    expected = [direct(data) for data in IMAGES]
    first = {p.pid for p in workers_of(server)}
    stalled = [stalled_upload(server) for _ in first]  # both workers held past the timeout
    wait_for_new_workers(server, first)
    assert server.log.count("WORKER TIMEOUT") == 2, server.log
    for client in stalled:  # each slow request ends: a 5xx status or the connection closed
        reply = client.recv(1000)
        assert reply == b"" or re.match(rb"HTTP/1\.1 5\d\d ", reply), reply
        client.close()
    for data, probabilities in zip(IMAGES, expected, strict=True):
        assert_same(server.post(data, "image/jpeg").json(), probabilities)

    victim = workers_of(server)[0].pid
    os.kill(victim, signal.SIGKILL)
    wait_for_new_workers(server, first | {victim})
    for data, probabilities in zip(IMAGES, expected, strict=True):
        assert_same(server.post(data, "image/jpeg").json(), probabilities)

    processes = [psutil.Process(server.process.pid), *workers_of(server)]
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(outcome, server, IMAGES[i % 4]) for i in range(48)]
        while not any(future.done() for future in futures):
            time.sleep(0.01)
        server.process.send_signal(signal.SIGTERM)
        outcomes = [future.result() for future in futures]
    assert server.process.wait(timeout=35) == 0, server.log

    answered = 0
    for i, (kind, result) in enumerate(outcomes):
        if kind == "answer":
            status, body = result
            assert status in (200, 503), (status, body)
            if status == 200:
                assert_same(body, expected[i % 4])
                answered += 1
            else:
                assert "message" in body or "error" in body, body
        else:
            assert result in ("ConnectionError",), result
    assert answered >= 1
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
