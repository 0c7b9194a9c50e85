"""`make demo`: train imgcls on scikit-learn's handwritten digits, as a SageMaker job would.

1. Writes the 1,797 8x8 digits as 32x32 PNGs in one folder per class (real data, shipped inside
   the scikit-learn package: nothing is downloaded).
2. `imgcls prepare` packs them into a SageMaker-style job folder (train and validation RecordIO
   channels, input/config with num_classes and num_training_samples counted); the demo then sets
   its own hyperparameters (small network, 28x28 crops) and runs `scripts/train`.
3. Starts `scripts/serve` on 127.0.0.1, waits for /ping, and scores validation images through
   POST /invocations, as a SageMaker endpoint would be called.
4. Prints where the training report is (output/data/report.html: curves, confusion matrix,
   per-class scores).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo" / "work"
SIDE = 32


def write_images(folder: Path) -> int:
    """The digits as grey PNGs, one subfolder per class; returns the image count."""
    digits = load_digits()
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        pixels = (image * (255.0 / 16.0)).astype(np.uint8)
        big = cv2.resize(pixels, (SIDE, SIDE), interpolation=cv2.INTER_CUBIC)
        target = folder / f"{label}" / f"{index:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), big)
    return len(digits.target)


HYPERPARAMETERS = {
    "num_layers": "20",
    "image_shape": "1,28,28",
    "epochs": "8",
    "mini_batch_size": "64",
    "learning_rate": "0.1",
    "lr_scheduler_step": "6",
    "lr_scheduler_factor": "0.1",
    "top_k": "2",
}


def prepare_job(images: Path, base: Path) -> dict:
    """`imgcls prepare` with a 20% validation split, then the demo's hyperparameters on top of
    the counts it wrote; returns the hyperparameters."""
    command = ["imgcls", "prepare", str(images), str(base), "--validation-fraction", "0.2"]
    subprocess.run(command, check=True)
    config = base / "input" / "config" / "hyperparameters.json"
    hyperparameters = {**json.loads(config.read_text()), **HYPERPARAMETERS}
    config.write_text(json.dumps(hyperparameters, indent=2))
    return hyperparameters


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_ping(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the server did not answer /ping in time")


def invoke(url: str, image: bytes) -> list[float]:
    request = urllib.request.Request(
        f"{url}/invocations", data=image, headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def validation_records(base: Path, count: int) -> list[tuple[int, bytes]]:
    """(label, PNG bytes) of the first `count` validation records, read with MXNet's reader."""
    rec = base / "input" / "data" / "validation" / "validation.rec"
    reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    try:
        unpacked = (mx.recordio.unpack(reader.read_idx(key)) for key in reader.keys[:count])
        return [(int(header.label), image) for header, image in unpacked]
    finally:
        reader.close()


def score_with_server(base: Path, count: int = 40) -> None:
    """Serve the trained model and score `count` validation images over HTTP."""
    port = free_port()
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base), "SAGEMAKER_BIND_TO_PORT": str(port)}
    server = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--host", "127.0.0.1"],
        env={**env, "SAGEMAKER_MODEL_SERVER_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_ping(url, server)
        rows = validation_records(base, count)
        correct = sum(int(np.argmax(invoke(url, image))) == label for label, image in rows)
        print(f"Served model on {url}: {correct}/{len(rows)} validation digits scored correctly")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    images, base = WORK / "images", WORK / "opt_ml"
    total = write_images(images)
    hyperparameters = prepare_job(images, base)
    print(
        f"Wrote {total} digit images; imgcls prepare packed "
        f"{hyperparameters['num_training_samples']} for training"
    )
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    train = subprocess.run([str(ROOT / "scripts" / "train")], env=env)
    if train.returncode != 0:
        print((base / "output" / "failure").read_text(), file=sys.stderr)
        return train.returncode
    print(f"Model: {sorted(p.name for p in (base / 'model').iterdir())}")
    score_with_server(base)
    print(f"Training report: {base / 'output' / 'data' / 'report.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
