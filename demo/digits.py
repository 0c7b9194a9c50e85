"""`make demo`: train imgcls on scikit-learn's handwritten digits, as a SageMaker job would.

1. Writes the 1,797 8x8 digits as 32x32 PNGs in one folder per class (real data, shipped inside
   the scikit-learn package: nothing is downloaded).
2. Packs them with MXNet's own tools/im2rec.py into train and validation RecordIO files.
3. Lays out a SageMaker-style base folder (input/config, input/data) and runs `scripts/train`.
4. Starts `scripts/serve` on 127.0.0.1, waits for /ping, and scores validation images through
   POST /invocations, as a SageMaker endpoint would be called.
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
import mxnet
import numpy as np
from sklearn.datasets import load_digits

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "demo" / "work"
IM2REC = Path(mxnet.__file__).parent / "tools" / "im2rec.py"
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


def im2rec(*args: str) -> None:
    subprocess.run([sys.executable, str(IM2REC), *args], check=True, stdout=subprocess.DEVNULL)


def pack_records(images: Path, prefix: Path) -> None:
    """im2rec.py --list splits 80/20 into <prefix>_train.lst and _val.lst, then packs both."""
    im2rec("--list", "--recursive", "--train-ratio", "0.8", str(prefix), str(images))
    im2rec("--pass-through", "--num-thread", "2", str(prefix), str(images))


def lay_out_job(base: Path, prefix: Path, num_training_samples: int) -> None:
    config = base / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {
        "num_classes": "10",
        "num_training_samples": str(num_training_samples),
        "num_layers": "20",
        "image_shape": "1,28,28",
        "epochs": "8",
        "mini_batch_size": "64",
        "learning_rate": "0.1",
        "lr_scheduler_step": "6",
        "lr_scheduler_factor": "0.1",
        "top_k": "2",
    }
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters, indent=2))
    for channel, split in (("train", "train"), ("validation", "val")):
        folder = base / "input" / "data" / channel
        folder.mkdir(parents=True)
        shutil.move(f"{prefix}_{split}.rec", folder / f"digits_{split}.rec")


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


def invoke(url: str, image: Path) -> list[float]:
    request = urllib.request.Request(
        f"{url}/invocations", data=image.read_bytes(), headers={"Content-Type": "image/png"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def score_with_server(base: Path, images: Path, listing: Path, count: int = 40) -> None:
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
        rows = [line.split("\t") for line in listing.read_text().splitlines()][:count]
        correct = 0
        for _, label, path in rows:
            probabilities = invoke(url, images / path)
            predicted = int(np.argmax(probabilities))
            correct += predicted == int(float(label))
        print(f"Served model on {url}: {correct}/{len(rows)} validation digits scored correctly")
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> int:
    shutil.rmtree(WORK, ignore_errors=True)
    images, base = WORK / "images", WORK / "opt_ml"
    total = write_images(images)
    prefix = WORK / "digits"
    pack_records(images, prefix)
    train_count = len(Path(f"{prefix}_train.lst").read_text().splitlines())
    print(f"Wrote {total} digit images; packed {train_count} for training with im2rec.py")
    lay_out_job(base, prefix, train_count)
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    train = subprocess.run([str(ROOT / "scripts" / "train")], env=env)
    if train.returncode != 0:
        print((base / "output" / "failure").read_text(), file=sys.stderr)
        return train.returncode
    print(f"Model: {sorted(p.name for p in (base / 'model').iterdir())}")
    score_with_server(base, images, Path(f"{prefix}_val.lst"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
