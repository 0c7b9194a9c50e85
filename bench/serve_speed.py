"""Serving speed: `/invocations` of a real `scripts/serve` vs a bare MXNet decode + forward.

Randomly initialised models exported with imgcls's own export, measured side by side in one run:
    python bench/serve_speed.py [--requests N]
Prints p50/p99 latency and requests/s of the server (1 and 2 workers, concurrency 1 and 2) and of
the bare loop (MXNet's imdecode + imresize + Module forward, one image at a time), and the p50
ratio (target at concurrency 1: server <= 1.3x bare). Measurements alternate over rounds and each
configuration keeps its best round, which tames a busy machine's noise.
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
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import cv2
import mxnet as mx
import numpy as np
import requests

from imgcls.model.artifact import PREFIX, export_model
from imgcls.model.networks import build_network

ROOT = Path(__file__).resolve().parent.parent
# (num_layers, image_shape, num_classes, side of the square JPEG that is sent)
CASES = [(18, (3, 224, 224), 1000, 256), (20, (3, 32, 32), 10, 40)]
WARMUP = 5
CONFIGS = [(workers, concurrency) for workers in (1, 2) for concurrency in (1, 2)]
Figures = tuple[float, float, float]  # p50 ms, p99 ms, calls/s


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


def stats(latencies: list[float], seconds: float) -> Figures:
    """p50 and p99 in ms, and calls per second."""
    ms = np.array(latencies) * 1000
    return float(np.percentile(ms, 50)), float(np.percentile(ms, 99)), len(ms) / seconds


def bare_call(model_dir: Path, shape, data: bytes) -> Callable[[], np.ndarray]:
    """Plain MXNet, as SageMaker's notebooks load the model: imdecode, imresize, forward."""
    sym, args, aux = mx.model.load_checkpoint(str(model_dir / PREFIX), 1)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (1, *shape))])
    module.set_params(args, aux)

    def once() -> np.ndarray:
        image = mx.image.imresize(mx.image.imdecode(data), shape[2], shape[1])
        batch = image.transpose((2, 0, 1)).expand_dims(0).astype("float32")
        module.forward(mx.io.DataBatch([batch]), is_train=False)
        return module.get_outputs()[0].asnumpy()

    return once


def timed(call: Callable[[], object], concurrency: int, count: int) -> Figures:
    """`count` calls from each of `concurrency` threads, after a warm-up."""
    for _ in range(WARMUP * concurrency):
        call()
    latencies: list[float] = []

    def client() -> None:
        for _ in range(count):
            begin = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - begin)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return stats(latencies, time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(base: Path, workers: int, log) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base),
        "SAGEMAKER_BIND_TO_PORT": str(port),
        "SAGEMAKER_MODEL_SERVER_WORKERS": str(workers),
    }
    env.pop("OMP_NUM_THREADS")  # the server gives each worker its share of the cores
    serve = [sys.executable, str(ROOT / "scripts" / "serve"), "--host", "127.0.0.1"]
    process = subprocess.Popen(serve, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                return process, port
        except requests.ConnectionError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"the server did not start; see {log.name}")


def invoke(port: int, data: bytes) -> None:
    """One POST /invocations on a new connection (sync workers close it after each answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/invocations", data, {"Content-Type": "image/jpeg"})
    response = connection.getresponse()
    response.read()
    connection.close()
    if response.status != 200:
        raise SystemExit(f"/invocations answered {response.status}")


def row(label: str, figures: Figures, reference: float) -> str:
    p50, p99, rate = figures
    return f"  {label:<30}{p50:>9.2f}{p99:>9.2f}{rate:>10.1f}{p50 / reference:>10.2f}"


def measure_case(base: Path, shape, data: bytes, rounds: int, count: int) -> dict:
    """Each configuration's best run (lowest p50) over `rounds` alternating rounds."""
    once = bare_call(base / "model", shape, data)
    logs = [(base / f"serve-{workers}.log").open("wb") for workers in (1, 2)]
    servers = {w: start_server(base, w, log) for w, log in zip((1, 2), logs, strict=True)}
    runs: dict = {key: [] for key in ["bare", *CONFIGS]}
    try:
        for _ in range(rounds):
            runs["bare"].append(timed(once, 1, count))
            for workers, concurrency in CONFIGS:
                port = servers[workers][1]
                figures = timed(lambda port=port: invoke(port, data), concurrency, count)
                runs[workers, concurrency].append(figures)
    finally:
        for process, _ in servers.values():
            process.terminate()
            process.wait(timeout=60)
        for log in logs:
            log.close()
    return {key: min(figures) for key, figures in runs.items()}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so that `finally` stops the servers
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="timed calls per client")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best kept")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"cores={cores} bare OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    with tempfile.TemporaryDirectory(prefix="imgcls-bench-") as folder:
        for num_layers, shape, classes, side in CASES:
            base = Path(folder) / f"resnet{num_layers}"
            export_random_model(base / "model", num_layers, shape, classes)
            best = measure_case(base, shape, jpeg(side), args.rounds, args.requests)
            reference = best["bare"][0]
            print(f"ResNet-{num_layers} {'x'.join(map(str, shape))}, {side}x{side} JPEG")
            print(f"  {'':<30}{'p50 ms':>9}{'p99 ms':>9}{'calls/s':>10}{'p50/bare':>10}")
            print(row("bare decode + forward", best["bare"], reference))
            for workers, concurrency in CONFIGS:
                label = f"server {workers} worker(s), conc {concurrency}"
                print(row(label, best[workers, concurrency], reference), flush=True)


if __name__ == "__main__":
    main()
