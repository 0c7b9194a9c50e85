"""The model server: a real `scripts/serve` process on 127.0.0.1, and its WSGI app in-process."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
import requests
from serving_support import (
    Direct,
    assert_same,
    encode_cmyk_jpeg,
    encode_jpeg,
    encode_png,
    export_tiny_model,
    flat_png,
    forbid_decoding,
    free_port,
    random_image,
)

from imgcls.config.serving import ServingSettings, serving_settings_from_env
from imgcls.data.preprocess import decode_image
from imgcls.errors import ClientError
from imgcls.model.archive import pack_model
from imgcls.serving import app as app_module
from imgcls.serving.app import HttpError, ServingApp, negotiate
from imgcls.serving.predictor import load_predictor
from imgcls.serving.server import gpu_for_new_worker, gunicorn_options

ROOT = Path(__file__).resolve().parent.parent
SERVE = ROOT / "scripts" / "serve"
WORKERS = 2
PAYLOAD_MB = 1


class Server:
    """`scripts/serve` under SAGEMAKER_BASE_DIR=base on a free loopback port; log in a file.

    OMP_NUM_THREADS is 1 unless `env` says otherwise; a variable given as None is unset."""

    def __init__(self, base: Path, **env: str | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = base / "serve.log"
        environ = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(base),
            "SAGEMAKER_BIND_TO_PORT": str(self.port),
            "OMP_NUM_THREADS": "1",
            **env,
        }
        environ = {name: value for name, value in environ.items() if value is not None}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(SERVE), "--host", "127.0.0.1"],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def _ready(self, workers: int) -> bool:
        if self.log.count(" ready: epoch") < workers:
            return False
        try:
            return requests.get(f"{self.url}/ping", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def wait_ready(self, workers: int, deadline: float = 60) -> None:
        """Until /ping answers 200 and every worker has logged that its model is loaded."""
        end = time.monotonic() + deadline
        while time.monotonic() < end:
            assert self.process.poll() is None, f"server exited:\n{self.log}"
            if self._ready(workers):
                return
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {deadline} s:\n{self.log}")

    def stop(self) -> int:
        self.process.terminate()
        return self.process.wait(timeout=30)

    def post(self, data: bytes, content_type: str | None, **headers: str) -> requests.Response:
        if content_type is not None:
            headers["Content-Type"] = content_type
        return requests.post(f"{self.url}/invocations", data=data, headers=headers, timeout=30)


def _start(base: Path, **env: str):
    server = Server(base, **env)
    try:
        server.wait_ready(int(env["SAGEMAKER_MODEL_SERVER_WORKERS"]))
        yield server
    finally:
        assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def rgb_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rgb")
    export_tiny_model(base / "model", seed=9)  # epoch 1: older, the server must not use it
    export_tiny_model(base / "model", epoch=2)
    return base


@pytest.fixture(scope="module")
def grey_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-channel multi-label model, delivered as model/model.tar.gz only."""
    base = tmp_path_factory.mktemp("grey")
    staging = base / "staging"
    export_tiny_model(staging, image_shape=(1, 16, 16), multi_label=True, seed=1)
    pack_model(staging, base / "model" / "model.tar.gz")
    return base


@pytest.fixture(scope="module")
def rgb_server(rgb_base: Path):
    yield from _start(
        rgb_base,
        SAGEMAKER_MODEL_SERVER_WORKERS=str(WORKERS),
        SAGEMAKER_MAX_PAYLOAD_IN_MB=str(PAYLOAD_MB),
        SAGEMAKER_MAX_CONCURRENT_TRANSFORMS="3",
        SAGEMAKER_BATCH_STRATEGY="MULTI_RECORD",
        SAGEMAKER_BATCH="true",
    )


@pytest.fixture(scope="module")
def grey_server(grey_base: Path):
    yield from _start(grey_base, SAGEMAKER_MODEL_SERVER_WORKERS="1")


@pytest.fixture(scope="module")
def rgb_direct(rgb_base: Path) -> Direct:
    return Direct(rgb_base / "model")


def test_ping_and_execution_parameters_follow_the_environment(rgb_server: Server) -> None:
    assert requests.get(f"{rgb_server.url}/ping", timeout=10).status_code == 200
    answer = requests.get(f"{rgb_server.url}/execution-parameters", timeout=10)
    assert answer.status_code == 200
    assert answer.json() == {
        "MaxConcurrentTransforms": 3,
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": PAYLOAD_MB,
    }
    assert f"{WORKERS} workers" in rgb_server.log
    assert rgb_server.log.count("ready: epoch 2,") == WORKERS
    assert "batch transform on" in rgb_server.log


@pytest.mark.parametrize(
    ("content_type", "encoder"),
    [("image/jpeg", encode_jpeg), ("image/png", encode_png), ("application/x-image", encode_png)],
)
@pytest.mark.parametrize(
    ("accept", "answer_type"),
    [
        (None, "application/json"),
        ("application/json", "application/json"),
        ("*/*", "application/json"),
        ("application/jsonlines", "application/jsonlines"),
        ("application/json;q=0.5, application/jsonlines", "application/jsonlines"),
    ],
)
def test_invocations_answer_each_content_type_and_accept_value(
    rgb_server: Server, rgb_direct: Direct, content_type, encoder, accept, answer_type
) -> None:
    data = encoder(random_image(seed=3))
    headers = {"Accept": accept} if accept else {}
    answer = rgb_server.post(data, content_type, **headers)
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == answer_type
    if answer_type == "application/jsonlines":
        assert answer.text.endswith("\n") and answer.text.count("\n") == 1
        served = json.loads(answer.text)["prediction"]
    else:
        served = answer.json()
    assert_same(served, rgb_direct(data))
    assert sum(served) == pytest.approx(1, abs=1e-5)


def test_answers_differ_between_images(rgb_server: Server) -> None:
    """Makes the equality checks meaningful: the tiny model does not answer a constant."""
    first, second = (rgb_server.post(encode_png(random_image(s)), "image/png") for s in (1, 2))
    assert not np.allclose(first.json(), second.json(), atol=1e-3)


def _raw_status(port: int, request: bytes) -> tuple[int, dict]:
    """Send `request` as is; the status and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_bad_requests_get_json_errors_and_the_server_keeps_serving(
    rgb_server: Server, rgb_direct: Direct
) -> None:
    png = encode_png(random_image(seed=4))
    cases = [
        (rgb_server.post(png, "text/csv"), 415),
        (rgb_server.post(png, None), 415),
        (rgb_server.post(b"", "image/png"), 400),
        (rgb_server.post(b"not an image at all", "image/jpeg"), 400),
        (rgb_server.post(png[: len(png) // 3], "image/png"), 400),
        (rgb_server.post(png, "image/png", Accept="text/csv"), 406),
        (requests.get(f"{rgb_server.url}/invocations", timeout=10), 405),
        (requests.get(f"{rgb_server.url}/nowhere", timeout=10), 404),
    ]
    for answer, status in cases:
        assert answer.status_code == status, answer.text
        assert answer.headers["Content-Type"] == "application/json"
        assert answer.json()["error"]
    declared_too_large = (
        b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
        + f"Content-Length: {PAYLOAD_MB * 1024 * 1024 + 1}\r\n\r\n".encode()
    )
    status, body = _raw_status(rgb_server.port, declared_too_large)
    assert status == 413 and "SAGEMAKER_MAX_PAYLOAD_IN_MB" in body["error"]

    assert requests.get(f"{rgb_server.url}/ping", timeout=10).status_code == 200
    assert_same(rgb_server.post(png, "image/png").json(), rgb_direct(png))
    assert "POST /invocations 415" in rgb_server.log
    assert "POST /invocations 400" in rgb_server.log


def test_concurrent_requests_equal_direct_predictions(
    rgb_server: Server, rgb_direct: Direct
) -> None:
    images = [encode_jpeg(random_image(seed, 16 + seed, 40 - seed)) for seed in range(24)]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda data: rgb_server.post(data, "image/jpeg"), images))
    for data, answer in zip(images, answers, strict=True):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), rgb_direct(data))
    pids = {
        line.split("Worker ")[1].split()[0]
        for line in rgb_server.log.splitlines()
        if " ready: " in line
    }
    assert len(pids) == WORKERS


def test_each_request_is_logged_with_status_and_latency(rgb_server: Server) -> None:
    requests.get(f"{rgb_server.url}/ping", timeout=10)
    lines = [line for line in rgb_server.log.splitlines() if "GET /ping 200 " in line]
    assert lines and lines[-1].startswith("[") and lines[-1].endswith(" ms")


def test_alpha_grey_cmyk_and_16_bit_images_are_converted(
    rgb_server: Server, rgb_direct: Direct
) -> None:
    rgb = random_image(seed=5)
    reference = rgb_server.post(encode_png(rgb), "image/png").json()

    alpha = np.random.default_rng(0).integers(0, 256, rgb.shape[:2] + (1,), dtype=np.uint8)
    with_alpha = rgb_server.post(encode_png(np.concatenate([rgb, alpha], axis=2)), "image/png")
    assert_same(with_alpha.json(), np.array(reference))

    sixteen = rgb_server.post(encode_png(rgb.astype(np.uint16) * 257), "image/png")
    assert_same(sixteen.json(), np.array(reference))

    grey = encode_jpeg(random_image(seed=6, channels=1))
    assert_same(rgb_server.post(grey, "image/jpeg").json(), rgb_direct(grey))

    cmyk = encode_cmyk_jpeg(rgb)
    assert np.abs(decode_image(cmyk, 3).astype(int) - rgb).mean() < 8
    assert_same(rgb_server.post(cmyk, "image/jpeg").json(), rgb_direct(cmyk))


def test_grey_multi_label_model_from_a_tarball(grey_server: Server, grey_base: Path) -> None:
    direct = Direct(grey_base / "staging")  # the files the tarball was packed from
    for data in (encode_png(random_image(seed=7)), encode_jpeg(random_image(8, channels=1))):
        answer = grey_server.post(data, "image/png")
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), direct(data))
        assert all(0 < p < 1 for p in answer.json())
    assert not np.isclose(sum(answer.json()), 1, atol=1e-3)


def _malicious_tarball(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with tarfile.open(path, "w:gz") as tar:
        member = tarfile.TarInfo("../escaped.txt")
        member.size = 4
        tar.addfile(member, io.BytesIO(b"evil"))


def test_a_model_tarball_with_a_malicious_member_stops_the_server(tmp_path: Path) -> None:
    _malicious_tarball(tmp_path / "model" / "model.tar.gz")
    server = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="1")
    assert server.process.wait(timeout=60) != 0
    assert "Refusing to extract" in server.log and "../escaped.txt" in server.log
    assert not (tmp_path / "escaped.txt").exists()


def test_a_bad_setting_stops_the_server_with_a_clear_error(tmp_path: Path) -> None:
    server = Server(tmp_path, SAGEMAKER_MODEL_SERVER_WORKERS="many")
    assert server.process.wait(timeout=60) == 1
    assert "ClientError: SAGEMAKER_MODEL_SERVER_WORKERS must be an integer" in server.log


def test_serving_settings_defaults_and_errors() -> None:
    settings = serving_settings_from_env({})
    assert settings.port == 8080 and settings.timeout == 60 and settings.max_payload_mb == 6
    assert settings.workers == len(os.sched_getaffinity(0)) == settings.max_concurrent_transforms
    assert settings.gpus == 0  # counted in a child process: this is the CPU build
    assert (settings.batch, settings.batch_strategy) == (False, "SINGLE_RECORD")
    custom = serving_settings_from_env(
        {"SAGEMAKER_BIND_TO_PORT": "9000", "SAGEMAKER_MODEL_SERVER_WORKERS": "3"}
    )
    assert (custom.port, custom.workers, custom.max_concurrent_transforms) == (9000, 3, 3)
    bad = [
        ("SAGEMAKER_BIND_TO_PORT", "70000"),
        ("SAGEMAKER_MODEL_SERVER_TIMEOUT", "0"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "-1"),
        ("SAGEMAKER_BATCH", "yes"),
        ("SAGEMAKER_BATCH_STRATEGY", "ALL"),
    ]
    for name, value in bad:
        with pytest.raises(ClientError, match=name):
            serving_settings_from_env({name: value})


def test_with_gpus_the_default_is_one_worker_per_gpu() -> None:
    four = serving_settings_from_env({}, gpus=4)
    assert (four.workers, four.max_concurrent_transforms, four.gpus) == (4, 4, 4)
    assert serving_settings_from_env({"SAGEMAKER_MODEL_SERVER_WORKERS": "2"}, gpus=4).workers == 2
    assert serving_settings_from_env({}, gpus=0).workers == len(os.sched_getaffinity(0))


def test_a_new_worker_takes_the_least_used_gpu() -> None:
    assert [gpu_for_new_worker(4, range(i)) for i in range(4)] == [0, 1, 2, 3]
    assert gpu_for_new_worker(4, [0, 1, 3]) == 2  # the worker on GPU 2 was replaced
    assert gpu_for_new_worker(2, [0, 1, 0]) == 1
    assert gpu_for_new_worker(1, [0, 0]) == 0


class FakeArbiter:
    """What gunicorn's Arbiter does around the hooks: pre_fork in the master with the live
    workers in WORKERS (pid -> worker; a dead one is reaped before its replacement spawns),
    then post_fork in the child with the same worker object."""

    def __init__(self, options: dict):
        self.options = options
        self.WORKERS: dict[int, object] = {}

    def spawn(self, pid: int) -> object:
        worker = type("Worker", (), {})()
        self.options["pre_fork"](self, worker)
        self.WORKERS[pid] = worker
        self.options["post_fork"](self, worker)
        return worker

    def reap(self, pid: int) -> None:
        del self.WORKERS[pid]


def test_worker_i_loads_onto_gpu_i_and_a_replacement_onto_the_freed_gpu(
    rgb_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gunicorn's hooks with stand-ins: no GPU here, so each load records its device and
    loads onto the CPU."""
    devices = []

    def load(model_dir: Path, ctx: mx.Context):
        devices.append(ctx)
        return load_predictor(model_dir, mx.cpu())

    monkeypatch.setattr(app_module, "load_predictor", load)
    app = ServingApp(rgb_base / "model", ServingSettings())
    arbiter = FakeArbiter(gunicorn_options(app, ServingSettings(workers=4, gpus=4), "127.0.0.1"))
    for pid in range(100, 104):
        arbiter.spawn(pid)
    arbiter.reap(102)
    arbiter.spawn(104)
    assert devices == [mx.gpu(0), mx.gpu(1), mx.gpu(2), mx.gpu(3), mx.gpu(2)]
    cpu_only = FakeArbiter(gunicorn_options(app, ServingSettings(workers=2), "127.0.0.1"))
    cpu_only.spawn(200)
    cpu_only.spawn(201)
    assert devices[5:] == [mx.cpu(), mx.cpu()]


def test_accept_negotiation() -> None:
    assert negotiate("") == "application/json"
    assert negotiate("text/html, application/*") == "application/json"
    assert negotiate("application/jsonlines;q=0.9, application/json") == "application/json"
    with pytest.raises(HttpError, match="application/jsonlines"):
        negotiate("application/json;q=0, text/csv")


def _call(app: ServingApp, method: str, path: str, body: bytes = b"", **extra) -> tuple[str, dict]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "wsgi.input": io.BytesIO(body)}
    statuses = []
    chunks = app({**environ, **extra}, lambda status, headers: statuses.append(status))
    return statuses[0], json.loads(b"".join(chunks) or b"null")


def test_ping_is_503_until_the_model_is_loaded(rgb_base: Path) -> None:
    app = ServingApp(rgb_base / "model", ServingSettings())
    assert _call(app, "GET", "/ping")[0].startswith("503")
    assert _call(app, "POST", "/invocations", b"x", CONTENT_TYPE="image/png")[0].startswith("503")
    app.load_model()
    assert _call(app, "GET", "/ping")[0] == "200 OK"


def test_a_body_longer_than_the_limit_without_a_declared_length_is_413(rgb_base: Path) -> None:
    app = ServingApp(rgb_base / "model", ServingSettings(max_payload_mb=1))
    app.load_model()
    status, body = _call(
        app, "POST", "/invocations", b"\0" * (1024 * 1024 + 1), CONTENT_TYPE="image/png"
    )
    assert status.startswith("413") and "1 MB" in body["error"]


def test_an_unexpected_error_is_a_500_with_a_json_body(rgb_base: Path) -> None:
    class Broken:
        def predict(self, data: bytes, where: str) -> None:
            raise RuntimeError("boom")

    app = ServingApp(rgb_base / "model", ServingSettings())
    app.predictor = Broken()
    status, body = _call(app, "POST", "/invocations", b"x", CONTENT_TYPE="image/png")
    assert status == "500 Internal Server Error" and "server log" in body["error"]
    assert _call(app, "GET", "/ping")[0] == "200 OK"


def test_a_decompression_bomb_gets_a_json_400_without_being_decoded(
    rgb_base: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20000x20000 (400 MP, a 50 kB PNG): once decoded in full (5.6 s, 2.4 GB) and answered."""
    bomb = flat_png(20000, 20000)
    forbid_decoding(monkeypatch, bomb)
    app = ServingApp(rgb_base / "model", ServingSettings())
    app.load_model()
    status, body = _call(app, "POST", "/invocations", bomb, CONTENT_TYPE="image/png")
    assert status == "400 Bad Request", body
    assert body["error"].startswith("the request body is over ")
    assert "more than the 64,000,000 pixels imgcls decodes" in body["error"]
    small = encode_png(random_image(5, 16, 16))
    status, body = _call(app, "POST", "/invocations", small, CONTENT_TYPE="image/png")
    assert status == "200 OK" and len(body) == 3
