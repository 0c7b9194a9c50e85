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
from process_support import suite_helpers
from serving_support import Direct, assert_same, encode_jpeg, export_tiny_model, random_image
from test_serving import Server

CORES = len(os.sched_getaffinity(0))
IMAGES = [encode_jpeg(random_image(seed, 16 + 2 * seed, 40 - 2 * seed)) for seed in range(8)]


# Started together (each start mostly waits for MXNet to import): name -> environment.
SETTINGS = {
    "default": {"OMP_NUM_THREADS": None},
    "one worker": {"SAGEMAKER_MODEL_SERVER_WORKERS": "1", "OMP_NUM_THREADS": None},
    "two workers, set to 3": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2", "OMP_NUM_THREADS": "3"},
}
WORKERS = {"default": CORES, "one worker": 1, "two workers, set to 3": 2}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model_dir = tmp_path_factory.mktemp("load") / "model"
    export_tiny_model(model_dir, seed=6)
    return model_dir


@pytest.fixture(scope="module")
def servers(model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The servers of SETTINGS on the same model, ready; the 16-client test stops "default"."""
    started = {}
    for name, env in SETTINGS.items():
        base = tmp_path_factory.mktemp("base")
        (base / "model").symlink_to(model_dir)
        started[name] = Server(base, **env)
    try:
        for name, server in started.items():
            server.wait_ready(WORKERS[name])
        yield started
    finally:
        for server in started.values():
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait(timeout=30)


def os_threads_of_workers(server: Server) -> list[int]:
    """The OS threads (/proc/<pid>/task) of each worker process, after a few requests."""
    for data in IMAGES[:4]:
        assert server.post(data, "image/jpeg").status_code == 200
    workers = psutil.Process(server.process.pid).children()
    return [len(os.listdir(f"/proc/{worker.pid}/task")) for worker in workers]


def test_each_worker_runs_its_share_of_the_cores_unless_omp_num_threads_is_set(
    servers: dict[str, Server],
) -> None:
    """An OpenMP team of n threads is the calling thread and n - 1 pool threads, and nothing
    else in a worker depends on OMP_NUM_THREADS: differences in OS threads between workers
    are differences in OpenMP threads."""
    threads = {name: os_threads_of_workers(server) for name, server in servers.items()}
    assert {name: len(counts) for name, counts in threads.items()} == WORKERS, threads
    assert all(len(set(counts)) == 1 for counts in threads.values()), threads
    default, one, three = (counts[0] for counts in threads.values())
    omp = {"default": 1, "one worker": CORES, "set": 3}  # default: a worker per core
    assert one - default == omp["one worker"] - omp["default"], threads
    assert three - default == omp["set"] - omp["default"], threads


def test_sixteen_clients_for_five_seconds_get_the_direct_prediction_of_their_image(
    servers: dict[str, Server], model_dir: Path
) -> None:
    """Default settings (a worker per core, OMP_NUM_THREADS unset); then SIGTERM: no process
    of the server is left."""
    direct = Direct(model_dir)
    expected = [direct(data) for data in IMAGES]
    server = servers["default"]
    processes = processes_of(server)
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
    assert len(answers) >= 16
    for image, answer in answers:
        assert answer.status_code == 200, answer.text
        assert_same(answer.json(), expected[image])
    assert len(processes) == 1 + CORES
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    others = {p.pid for name in servers if name != "default" for p in processes_of(servers[name])}
    others |= suite_helpers()
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= others


def processes_of(server: Server) -> list[psutil.Process]:
    """The server's master and its workers."""
    master = psutil.Process(server.process.pid)
    return [master, *master.children(recursive=True)]
