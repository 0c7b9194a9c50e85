"""Faults against a real `scripts/serve` (gunicorn, real processes): requests slower than the
timeout, a worker killed, then the whole server stopped with requests in flight; and, in-process,
the answer of a request whose work outlives the timeout."""

from __future__ import annotations

import io
import json
import os
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

from imgcls.config.serving import ServingSettings
from imgcls.serving.app import ServingApp
from imgcls.serving.server import abort_request

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


def answer_of(client: socket.socket) -> tuple[int, str, bytes]:
    """Status, Content-Type and body of the whole answer on `client`, read until closed."""
    reply = b""
    while chunk := client.recv(65536):
        reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers["Content-Type"], body


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
    for client in stalled:  # each gets a JSON 408 (gunicorn alone would send an HTML 500)
        status, content_type, body = answer_of(client)
        assert (status, content_type) == (408, "application/json"), body
        assert f"SAGEMAKER_MODEL_SERVER_TIMEOUT ({TIMEOUT} s)" in json.loads(body)["error"]
        client.close()
    assert server.log.count("POST /invocations 408") == 2, server.log
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


def test_work_that_outlives_the_timeout_gets_a_json_504(tmp_path: Path) -> None:
    """gunicorn's abort (SIGABRT at the timeout) runs the worker_abort hook in the request's
    frame; here the hook runs where a real abort would land: inside the forward pass."""
    export_tiny_model(tmp_path / "model", seed=4)
    app = ServingApp(tmp_path / "model", ServingSettings(timeout=7))
    app.load_model()

    def slow_predict(batch):  # the forward pass outlives the timeout and the master aborts
        abort_request(app)

    app.predictor.predict_batch = slow_predict
    environ = {
        "PATH_INFO": "/invocations",
        "REQUEST_METHOD": "POST",
        "CONTENT_TYPE": "image/jpeg",
        "wsgi.input": io.BytesIO(IMAGES[0]),
    }
    started: list[str] = []
    body = b"".join(app(environ, lambda status, headers: started.append(status)))
    assert started == ["504 Gateway Timeout"]
    assert "SAGEMAKER_MODEL_SERVER_TIMEOUT (7 s)" in json.loads(body)["error"]
    assert app.phase == ""
    abort_request(app)  # outside a request the hook does nothing: gunicorn's exit goes on
