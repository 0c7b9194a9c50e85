"""Batch scoring speed: `serve batch` over a folder of JPEGs vs the bare loop on the same network.

Randomly initialised models exported with imgcls's own export, measured in one run:
    python bench/batch_speed.py [--images N]
The bare loop is what batch scoring cannot beat: cv2 decode + resize, then forward passes of
the same batch size through the same hybridized network (`load_model`), no files written.
`serve batch` runs as a real subprocess; its figure is the images/s of its own summary line
(scoring only: reads, decodes, forward passes and atomic writes; model loading excluded).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))

import cv2
import mxnet as mx
import numpy as np

from imgcls.data.preprocess import decode_image, resize_exact, to_network_input
from imgcls.model.artifact import export_model
from imgcls.model.inference import load_model
from imgcls.model.networks import build_network
from imgcls.serving.batch import batch_size

ROOT = Path(__file__).resolve().parent.parent
# (num_layers, image_shape, num_classes, side of the square JPEGs scored)
CASES = [(20, (3, 32, 32), 10, 40), (18, (3, 224, 224), 1000, 256)]


def export_random_model(model_dir: Path, num_layers: int, shape, classes: int) -> None:
    net = build_network(num_layers, classes, shape)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *shape)))
    export_model(
        net, model_dir, 1, shape, False, {"num_layers": num_layers, "num_classes": classes}
    )


def write_jpegs(folder: Path, count: int, side: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    images = []
    for i in range(count):
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (side, side), interpolation=cv2.INTER_LINEAR)
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        (folder / f"{i:05d}.jpg").write_bytes(data)
        images.append(data)
    return images


def bare_loop(model_dir: Path, images: list[bytes], shape) -> float:
    """Images/s of decode + resize + batched forward, one thread, no files."""
    model = load_model(model_dir)
    size = batch_size(shape)
    model.predict(np.zeros((size, *shape), dtype=np.float32))
    started = time.perf_counter()
    for i in range(0, len(images), size):
        chunk = [resize_exact(decode_image(d, 3), *shape[1:]) for d in images[i : i + size]]
        chunk += [chunk[0]] * (size - len(chunk))
        model.predict(to_network_input(chunk))
    return len(images) / (time.perf_counter() - started)


def serve_batch(model_dir: Path, source: Path, destination: Path) -> float:
    """Images/s that `scripts/serve batch` reports for scoring the folder."""
    command = [sys.executable, str(ROOT / "scripts" / "serve"), "batch", "--model", str(model_dir)]
    run = subprocess.run(
        [*command, "--input", str(source), "--output", str(destination)],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return float(re.findall(r"([\d.]+) images/s", run.stdout)[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=500, help="JPEGs per case")
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, {args.images} images per case")
    print("case | batch | bare loop images/s | serve batch images/s | ratio")
    for num_layers, shape, classes, side in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            export_random_model(base / "model", num_layers, shape, classes)
            images = write_jpegs(base / "in", args.images, side)
            bare = bare_loop(base / "model", images, shape)
            served = serve_batch(base / "model", base / "in", base / "out")
            case = f"ResNet-{num_layers} {shape[1]}x{shape[2]} from {side}px JPEGs"
            print(f"{case} | {batch_size(shape)} | {bare:.1f} | {served:.1f} | {served / bare:.2f}")


if __name__ == "__main__":
    main()
