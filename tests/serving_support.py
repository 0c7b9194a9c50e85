"""Tiny exported models and encoded images for the serving and batch-scoring tests."""

from __future__ import annotations

import io
import json
import os
import socket
import struct
import zlib
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image

from imgcls.model.artifact import export_model
from imgcls.model.networks import build_network

# Loopback only: boto3 must neither find real credentials nor ask an instance metadata service.
FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}


def export_tiny_model(
    model_dir: Path,
    image_shape: tuple[int, int, int] = (3, 16, 16),
    num_classes: int = 3,
    multi_label: bool = False,
    seed: int = 0,
    epoch: int = 1,
) -> Path:
    """A ResNet-20 exported with the project's code; random BatchNorm statistics make its
    outputs depend clearly on the input."""
    mx.random.seed(seed)
    net = build_network(20, num_classes, image_shape)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *image_shape)))
    rng = np.random.default_rng(seed)
    for name, param in net.collect_params().items():
        if name.endswith(("running_mean", "running_var", "gamma", "beta")):
            param.set_data(mx.nd.array(rng.uniform(0.5, 1.5, param.shape)))
    metadata = {"num_layers": 20, "num_classes": num_classes}
    return export_model(net, model_dir, epoch, image_shape, multi_label, metadata)


def random_image(seed: int, height: int = 20, width: int = 24, channels: int = 3) -> np.ndarray:
    """An HxWxC uint8 image (RGB order) of blocky noise, which survives JPEG well enough."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 4, width // 4, channels), dtype=np.uint8)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST).reshape(
        height, width, channels
    )


def _bgr(image: np.ndarray) -> np.ndarray:
    """OpenCV's channel order for an RGB or RGBA image; grey stays grey."""
    codes = {3: cv2.COLOR_RGB2BGR, 4: cv2.COLOR_RGBA2BGRA}
    channels = image.shape[2] if image.ndim == 3 else 1
    return cv2.cvtColor(image, codes[channels]) if channels in codes else image


def encode_png(image: np.ndarray) -> bytes:
    """PNG of an RGB, RGBA or grey image, 8- or 16-bit."""
    return cv2.imencode(".png", _bgr(image))[1].tobytes()


def encode_jpeg(image: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", _bgr(image), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def encode_cmyk_jpeg(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).convert("CMYK").save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


class Direct:
    """Plain MXNet's answer for an image file, which every served answer must equal: the model
    as SageMaker's notebooks load it (load_checkpoint and Module), the pixels decoded by Pillow
    (PNG, RGB) or by OpenCV's own decoder (other formats; Pillow's JPEG decoder may differ from
    it by a level; one-channel models: OpenCV's grey, always), squashed to image_shape by
    OpenCV's bilinear resize, as the contract says. No imgcls code on the way."""

    def __init__(self, model_dir: Path):
        files = Path(model_dir).glob("image-classification-*.params")
        epoch = max(int(p.stem.rsplit("-", 1)[1]) for p in files)  # the served one: the last
        sym, args, auxs = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
        shapes = json.loads((Path(model_dir) / "model-shapes.json").read_text())
        self.channels, self.height, self.width = shapes[0]["shape"][1:]
        self.module = mx.mod.Module(sym, label_names=None, context=mx.cpu())
        self.module.bind(data_shapes=[("data", (1, *shapes[0]["shape"][1:]))], for_training=False)
        self.module.set_params(args, auxs)

    def pixels(self, data: bytes) -> np.ndarray:
        """H x W x C uint8, RGB or grey."""
        if self.channels == 1:
            grey = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE)
            return grey[:, :, None]
        if data.startswith(b"\x89PNG"):
            return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        bgr = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def __call__(self, data: bytes) -> np.ndarray:
        squashed = cv2.resize(
            self.pixels(data), (self.width, self.height), interpolation=cv2.INTER_LINEAR
        ).reshape(self.height, self.width, self.channels)
        batch = mx.io.DataBatch([mx.nd.array(squashed.transpose(2, 0, 1)[None])])
        self.module.forward(batch, is_train=False)
        return self.module.get_outputs()[0].asnumpy()[0]


def assert_same(served: list[float], expected: np.ndarray) -> None:
    np.testing.assert_allclose(np.array(served), expected, rtol=1e-5, atol=1e-6)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flat_png(width: int, height: int) -> bytes:
    """A valid 1-bit grey PNG of one colour, written with zlib: a few kB on disk, however many
    pixels its header declares (20000x20000 is 50 kB; decoded to RGB it would be 1.2 GB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def forbid_decoding(monkeypatch: pytest.MonkeyPatch, *forbidden: bytes) -> None:
    """Make cv2.imdecode fail the test when handed any of `forbidden`: they must be refused
    from their header, before decoding."""
    real = cv2.imdecode

    def imdecode(buffer: np.ndarray, flags: int) -> np.ndarray | None:
        if buffer.tobytes() in forbidden:
            raise AssertionError("an image the header check must refuse reached cv2.imdecode")
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", imdecode)
