"""Fixtures that build tiny SageMaker-style jobs and datasets on the fly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from imgcls.mxnet_import import CACHE_DIR_ENV

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"

os.environ.setdefault("OMP_NUM_THREADS", str(len(os.sched_getaffinity(0))))
# MXNet's operator cache (imgcls/mxnet_import.py) for the session's processes, not in ~/.cache.
OPERATOR_CACHE = tempfile.TemporaryDirectory(prefix="imgcls-operators-")
os.environ[CACHE_DIR_ENV] = OPERATOR_CACHE.name

from process_support import run_train  # noqa: E402  (after the line above: it keeps os.environ)


def pattern_image(label: int, size: int, channels: int, rng: np.random.Generator) -> np.ndarray:
    """A noisy image whose bright quadrant says its class (up to 4 classes): easy to learn."""
    image = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
    half = size // 2
    rows = slice(0, half) if label % 2 == 0 else slice(half, size)
    cols = slice(0, half) if label < 2 else slice(half, size)
    image[rows, cols] = rng.integers(190, 255, (half, half, channels), dtype=np.uint8)
    return image


def write_rec(
    path: Path,
    labels: list[int] | list[list[float]],
    size: int = 16,
    channels: int = 3,
    seed: int = 0,
    image_format: str = ".png",
) -> Path:
    """A RecordIO file of pattern images, written with MXNet's own recordio.pack_img."""
    import mxnet as mx

    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index, label in enumerate(labels):
        cls = int(np.argmax(label)) if isinstance(label, list) else int(label)
        image = pattern_image(cls, size, channels, rng)
        header = mx.recordio.IRHeader(0, label, index, 0)
        writer.write(mx.recordio.pack_img(header, image[:, :, ::-1].copy(), img_fmt=image_format))
    writer.close()
    return path


def balanced_labels(count: int, num_classes: int) -> list[int]:
    return [i % num_classes for i in range(count)]


def run_script(
    name: str, base: Path, *args: str, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run scripts/<name> as SageMaker would, with SAGEMAKER_BASE_DIR=base (`train`: forked
    from a process that has imported MXNet when the job allows it, tests/process_support.py)."""
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(base)}
    if name == "train":
        return run_train(SCRIPTS / name, base, args, env, timeout)
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Job:
    """A SageMaker base folder under construction."""

    def __init__(self, base: Path):
        self.base = base
        self.config = base / "input" / "config"
        self.data = base / "input" / "data"
        self.config.mkdir(parents=True)
        self.data.mkdir(parents=True)

    def hyperparameters(self, values: dict) -> Job:
        (self.config / "hyperparameters.json").write_text(json.dumps(values))
        return self

    def input_data_config(self, values: dict) -> Job:
        (self.config / "inputdataconfig.json").write_text(json.dumps(values))
        return self

    def rec_channel(self, channel: str, labels: list, **kwargs) -> Path:
        return write_rec(self.data / channel / f"{channel}.rec", labels, **kwargs)

    @property
    def failure(self) -> str:
        return (self.base / "output" / "failure").read_text()

    @property
    def model_dir(self) -> Path:
        return self.base / "model"

    def train(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return run_script("train", self.base, *args, timeout=timeout)


@pytest.fixture
def make_job(tmp_path: Path) -> Callable[..., Job]:
    """make_job(name) -> an empty job folder; fill it with its methods."""

    def make(name: str = "job") -> Job:
        return Job(tmp_path / name)

    return make


TINY_HYPERPARAMETERS = {
    "num_classes": "4",
    "num_training_samples": "64",
    "num_layers": "20",
    "image_shape": "3,16,16",
    "mini_batch_size": "16",
    "epochs": "2",
}
