"""The real server (`scripts/serve`, gunicorn) as deployed: OMP_NUM_THREADS unset, so the
server splits the cores between its workers, and many clients at once."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from serving_support import Direct, assert_same, encode_jpeg, export_tiny_model, random_image
from test_serving import Server

CORES = len(os.sched_getaffinity(0))
IMAGES = [encode_jpeg(random_image(seed, 16 + 2 * seed, 40 - 2 * seed)) for seed in range(8)]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("load")
    export_tiny_model(base / "model", seed=6)
    return base


def os_threads_of_workers(server: Server) -> list[int]:
    """The OS threads (/proc/<pid>/task) of each worker process, after a few requests."""
    for data in IMAGES[:4]:
        assert server.post(data, "image/jpeg").status_code == 200
    workers = psutil.Process(server.process.pid).children()
    return [len(os.listdir(f"/proc/{worker.pid}/task")) for worker in workers]


def test_each_worker_runs_its_share_of_the_cores_unless_omp_num_threads_is_set(
    base: Path, tmp_path: Path
) -> None:
    """An OpenMP team of n threads is the calling thread and n - 1 pool threads, and nothing
    else in a worker depends on OMP_NUM_THREADS: differences in OS threads between workers
    are differences in OpenMP threads."""
    settings = {
        "one worker, unset": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "OMP_NUM_THREADS": None},
        "two workers, unset": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "OMP_NUM_THREADS": None},
        "two workers, set to 3": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "OMP_NUM_THREADS": "3"},
    }
    servers = {}
    for i, (name, env) in enumerate(settings.items()):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "model").symlink_to(base / "model")
        servers[name] = Server(tmp_path / str(i), **env)
    try:
        threads = {}
        for name, server in servers.items():
            server.wait_ready(int(settings[name]["SAGEMAKER_MODEL_SERVER_WORKERS"]))
            threads[name] = os_threads_of_workers(server)
    finally:
        for server in servers.values():
            assert server.stop() == 0, server.log
    one, (first, second), (third, fourth) = threads.values()
    assert len(one) == 1 and first == second and third == fourth, threads
    omp = {"one worker": CORES, "two workers": max(1, CORES // 2), "set": 3}
    assert one[0] - first == omp["one worker"] - omp["two workers"], threads
    assert third - first == omp["set"] - omp["two workers"], threads


def test_sixteen_clients_for_five_seconds_get_the_direct_prediction_of_their_image(
    base: Path,
) -> None:
    """Default settings (a worker per core, OMP_NUM_THREADS unset); then SIGTERM: no process
    of the server is left."""
    direct = Direct(base / "model")
    expected = [direct(data) for data in IMAGES]
    server = Server(base, OMP_NUM_THREADS=None)
    try:
        server.wait_ready(CORES)
        processes = [psutil.Process(server.process.pid), *workers_of(server)]
        end = time.monotonic() + 5

        def client(i: int) -> list[tuple[int, requests.Response]]:
            answers = []
            while time.monotonic() < end:
                image = (i + len(answers)) % len(IMAGES)
                answers.append((image, server.post(IMAGES[image], "image/jpeg")))
            return answers

        with ThreadPoolExecutor(16) as pool:
            answers = [a for chunk in pool.map(client, range(16)) for a in chunk]
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=35) == 0, server.log
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait(timeout=30)
    assert len(answers) >= 16
    for image, answer in answers:
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), expected[image])
    assert len(processes) == 1 + CORES
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not psutil.Process().children(recursive=True)


def workers_of(server: Server) -> list[psutil.Process]:
    return psutil.Process(server.process.pid).children(recursive=True)
