"""Serving under load: a real `scripts/serve` (gunicorn) vs bare decode + forward, same run.

Randomly initialised models exported with imgcls's own export (ResNet-18 at 224, ResNet-20 at
32), loopback only, bounded in requests and time:
    python bench/serve_load.py [--seconds S] [--requests N] [--rounds R]
Concurrency 1, 2, 4, 8, 16 (client threads, each sending one request at a time on a new
connection) against the server with its default settings and with one worker, both with
OMP_NUM_THREADS unset so the server splits the cores itself. The bare reference runs the same
number of processes with the same OpenMP threads each as the server configuration it is paired
with (cv2 decode + resize + the same hybridized network from `load_model`, no HTTP); the same
client threads hand it the same JPEG bytes through a process pool, so it queues like the server
does. Each point runs S seconds or N requests, whichever ends first; rounds alternate the order
and the table gives the median over rounds (requests/s spread as min-max).
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import requests

from imgcls.config.serving import default_workers, threads_per_worker
from imgcls.model.artifact import export_model
from imgcls.model.inference import LoadedModel, load_model
from imgcls.model.networks import build_network
from imgcls.system import cpu_count

ROOT = Path(__file__).resolve().parent.parent
# (num_layers, image_shape, num_classes, side of the square JPEG that is sent)
CASES = [(18, (3, 224, 224), 1000, 256), (20, (3, 32, 32), 10, 40)]
CONCURRENCY = (1, 2, 4, 8, 16)
_MODEL: LoadedModel | None = None  # the bare reference's model, one per pool process


@dataclass(frozen=True)
class Point:
    """One measurement: requests/s, latency percentiles in ms, and failed requests."""

    rate: float
    p50: float
    p95: float
    p99: float
    errors: int


def export_random_model(model_dir: Path, num_layers: int, shape, classes: int) -> None:
    net = build_network(num_layers, classes, shape)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *shape)))  # export_model reads the weights: finish their initialisation
    export_model(
        net, model_dir, 1, shape, False, {"num_layers": num_layers, "num_classes": classes}
    )


def jpeg(side: int) -> bytes:
    small = np.random.default_rng(0).integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
    image = cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()


def _load_bare(model_dir: Path) -> None:
    """Pool initializer: the hybridized network, warmed up."""
    global _MODEL
    _MODEL = load_model(model_dir)
    _MODEL.predict(np.zeros((1, *_MODEL.image_shape), dtype=np.float32))


def bare_predict(data: bytes) -> np.ndarray:
    """cv2 decode + resize + forward, no HTTP and none of imgcls's preprocessing code."""
    _, height, width = _MODEL.image_shape
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    image = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), (width, height))
    return _MODEL.predict(image.transpose(2, 0, 1)[None].astype(np.float32))[0]


def bare_pool(model_dir: Path, processes: int, threads: int) -> ProcessPoolExecutor:
    """`processes` fresh interpreters, each with `threads` OpenMP threads and the model loaded."""
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by each spawned child's MXNet
    pool = ProcessPoolExecutor(
        processes, get_context("spawn"), initializer=_load_bare, initargs=(model_dir,)
    )
    for future in [pool.submit(os.getpid) for _ in range(4 * processes)]:
        future.result()
    return pool


def start_server(
    base: Path, workers: int | None, expected: int, log
) -> tuple[subprocess.Popen, int]:
    """`scripts/serve` with OMP_NUM_THREADS unset, its default workers when `workers` is None;
    returns once `expected` workers have loaded the model and /ping answers."""
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port)}
    env.pop("OMP_NUM_THREADS", None)
    env.pop("SAGEMAKER_MODEL_SERVER_WORKERS", None)
    if workers is not None:
        env["SAGEMAKER_MODEL_SERVER_WORKERS"] = str(workers)
    serve = [sys.executable, str(ROOT / "scripts" / "serve"), "--host", "127.0.0.1"]
    process = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.2)
        if Path(log.name).read_text().count(" ready: epoch") < expected:
            continue
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=5).status_code == 200:
                return process, port
        except requests.RequestException:
            pass
    process.kill()
    raise SystemExit(f"the server did not start; see {log.name}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def invoke(port: int, data: bytes) -> None:
    """One POST /invocations on a new connection (sync workers close it after each answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("POST", "/invocations", data, {"Content-Type": "image/jpeg"})
        response = connection.getresponse()
        response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise RuntimeError(f"/invocations answered {response.status}")


def load(call: Callable[[], object], concurrency: int, seconds: float, limit: int) -> Point:
    """`concurrency` clients calling back to back for `seconds` or `limit` calls in all."""
    for _ in range(2):
        call()
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    end = time.perf_counter() + seconds

    def client() -> None:
        while time.perf_counter() < end:
            with lock:
                if len(latencies) + errors[0] >= limit:
                    return
            begin = time.perf_counter()
            try:
                call()
                ok = True
            except Exception:
                ok = False
            with lock:
                if ok:
                    latencies.append(time.perf_counter() - begin)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies or [np.nan]) * 1000
    p50, p95, p99 = (float(np.percentile(ms, q)) for q in (50, 95, 99))
    return Point(len(latencies) / elapsed, p50, p95, p99, errors[0])


def measure_case(base: Path, data: bytes, args: argparse.Namespace) -> dict:
    """Every (system, concurrency) point of every round, rounds in rotating order."""
    cores = cpu_count()
    workers = default_workers(0, cores)
    systems = {
        "default": (None, workers, threads_per_worker(cores, workers)),
        "1 worker": (1, 1, threads_per_worker(cores, 1)),
    }
    calls: dict[str, Callable[[], object]] = {}
    stop: list[Callable[[], object]] = []
    try:
        for name, (setting, processes, threads) in systems.items():
            log = (base / f"serve-{processes}.log").open("wb")
            process, port = start_server(base, setting, processes, log)
            stop += [process.terminate, process.wait, log.close]
            pool = bare_pool(base / "model", processes, threads)
            stop.append(pool.shutdown)
            calls[f"server {name}"] = lambda port=port: invoke(port, data)
            calls[f"bare {name}"] = lambda pool=pool: pool.submit(bare_predict, data).result()
        names = list(calls)
        points: dict = {}
        for r in range(args.rounds):
            for concurrency in CONCURRENCY:
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    point = load(calls[name], concurrency, args.seconds, args.requests)
                    points.setdefault((name, concurrency), []).append(point)
    finally:
        for action in stop:
            action()
    return {"systems": systems, "points": points}


def median(points: list[Point], field: str) -> float:
    return float(np.median([getattr(p, field) for p in points]))


def report(title: str, result: dict) -> None:
    print(f"\n{title}")
    head = f"{'conc':>4}  {'system':<24}{'req/s':>8} {'(min-max)':<13}"
    head += "".join(f"{h:>8}" for h in ("p50 ms", "p95 ms", "p99 ms", "errors"))
    print(f"{head}{'rate/bare':>10}{'p50/bare':>9}")
    for concurrency in CONCURRENCY:
        for name, (_, processes, threads) in result["systems"].items():
            bare = result["points"][f"bare {name}", concurrency]
            for kind in ("server", "bare"):
                points = result["points"][f"{kind} {name}", concurrency]
                rates = [p.rate for p in points]
                label = f"{kind} {processes}x{threads}"
                label += " (default)" if name == "default" else ""
                spread = f"({min(rates):.1f}-{max(rates):.1f})"
                line = f"{concurrency:>4}  {label:<24}{median(points, 'rate'):>8.1f} {spread:<13}"
                line += "".join(f"{median(points, f):>8.1f}" for f in ("p50", "p95", "p99"))
                line += f"{sum(p.errors for p in points):>8}"
                if kind == "server":
                    line += f"{median(points, 'rate') / median(bare, 'rate'):>10.2f}"
                    line += f"{median(points, 'p50') / median(bare, 'p50'):>9.2f}"
                print(line, flush=True)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the servers
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.0, help="longest time per point")
    parser.add_argument("--requests", type=int, default=300, help="most requests per point")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; median kept")
    args = parser.parse_args()
    print(f"cores={cpu_count()}; load average {os.getloadavg()[0]:.2f} at start")
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as folder:
        for num_layers, shape, classes, side in CASES:
            base = Path(folder) / f"resnet{num_layers}"
            export_random_model(base / "model", num_layers, shape, classes)
            result = measure_case(base, jpeg(side), args)
            report(f"ResNet-{num_layers} {'x'.join(map(str, shape))}, {side}x{side} JPEG", result)
    print(f"\nload average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
