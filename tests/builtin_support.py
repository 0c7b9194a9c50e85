"""Models as SageMaker's built-in algorithm writes them, built here from the documented structure
of MXNet's example/image-classification/symbols/resnet.py (ResNet v2) and trained with Module."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import mxnet as mx
import numpy as np
from conftest import pattern_image
from PIL import Image

LARGE_UNITS = {
    18: [2, 2, 2, 2],
    34: [3, 4, 6, 3],
    50: [3, 4, 6, 3],
    101: [3, 4, 23, 3],
    152: [3, 8, 36, 3],
    200: [3, 24, 36, 3],
}
PREFIX = "image-classification"


def _bn(x: mx.sym.Symbol, name: str, fix_gamma: bool = False) -> mx.sym.Symbol:
    return mx.sym.BatchNorm(x, fix_gamma=fix_gamma, eps=2e-5, momentum=0.9, name=name)


def _conv(x, filters: int, kernel: int, stride: int, name: str) -> mx.sym.Symbol:
    return mx.sym.Convolution(
        x,
        num_filter=filters,
        kernel=(kernel, kernel),
        stride=(stride, stride),
        pad=(kernel // 2, kernel // 2),
        no_bias=True,
        name=name,
    )


def _relu(x, name: str) -> mx.sym.Symbol:
    return mx.sym.Activation(x, act_type="relu", name=name)


def _unit(x, filters: int, stride: int, projection: bool, name: str, bottleneck: bool):
    """Pre-activation unit: bn1-relu-conv1, bn2-relu-conv2 (bottleneck: 1×1, 3×3, 1×1)."""
    act1 = _relu(_bn(x, f"{name}_bn1"), f"{name}_relu1")
    if bottleneck:
        y = _conv(act1, filters // 4, 1, 1, f"{name}_conv1")
        y = _conv(
            _relu(_bn(y, f"{name}_bn2"), f"{name}_relu2"), filters // 4, 3, stride, f"{name}_conv2"
        )
        y = _conv(_relu(_bn(y, f"{name}_bn3"), f"{name}_relu3"), filters, 1, 1, f"{name}_conv3")
    else:
        y = _conv(act1, filters, 3, stride, f"{name}_conv1")
        y = _conv(_relu(_bn(y, f"{name}_bn2"), f"{name}_relu2"), filters, 3, 1, f"{name}_conv2")
    shortcut = _conv(act1, filters, 1, stride, f"{name}_sc") if projection else x
    return y + shortcut


def _cifar_tables(num_layers: int) -> tuple[list[int], list[int], bool]:
    """Units per stage, filters and bottleneck of the 3-stage networks for images ≤ 28 px high."""
    if num_layers >= 164 and (num_layers - 2) % 9 == 0:
        return [(num_layers - 2) // 9] * 3, [16, 64, 128, 256], True
    if num_layers < 164 and (num_layers - 2) % 6 == 0:
        return [(num_layers - 2) // 6] * 3, [16, 16, 32, 64], False
    raise ValueError(f"resnet.py builds no ResNet-{num_layers} for images up to 28 px high")


def builtin_resnet(num_layers: int, num_classes: int, image_shape: tuple[int, int, int]):
    """The built-in algorithm's symbol, by the image height alone: 3-stage (CIFAR) tables up to
    28 px, ImageNet ones above; a 3×3/1 stem up to 32 px, else 7×7/2 + bn0 + max pooling; every
    stage (also stage 1) opens with a projection shortcut."""
    height = image_shape[1]
    if height <= 28:
        units, filters, bottleneck = _cifar_tables(num_layers)
    else:
        units, bottleneck = LARGE_UNITS[num_layers], num_layers >= 50
        filters = [64, 256, 512, 1024, 2048] if bottleneck else [64, 64, 128, 256, 512]
    x = _bn(mx.sym.identity(mx.sym.var("data"), name="id"), "bn_data", fix_gamma=True)
    if height <= 32:
        x = _conv(x, filters[0], 3, 1, "conv0")
    else:
        x = _relu(_bn(_conv(x, filters[0], 7, 2, "conv0"), "bn0"), "relu0")
        x = mx.sym.Pooling(x, kernel=(3, 3), stride=(2, 2), pad=(1, 1), pool_type="max")
    for s, count in enumerate(units):
        for u in range(count):
            stride = 2 if s > 0 and u == 0 else 1
            x = _unit(x, filters[s + 1], stride, u == 0, f"stage{s + 1}_unit{u + 1}", bottleneck)
    x = _relu(_bn(x, "bn1"), "relu1")
    x = mx.sym.Flatten(mx.sym.Pooling(x, global_pool=True, kernel=(7, 7), pool_type="avg"))
    fc1 = mx.sym.FullyConnected(x, num_hidden=num_classes, name="fc1")
    return mx.sym.SoftmaxOutput(fc1, name="softmax")


def pattern_images(count: int, num_classes: int, shape: tuple[int, int, int], seed: int = 0):
    """(uint8 NHWC images, labels) whose bright quadrant says the class."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % num_classes
    images = np.stack([pattern_image(int(c), shape[1], shape[0], rng) for c in labels])
    return images, labels


def trained_builtin_model(
    folder: Path, num_layers: int, num_classes: int, shape: tuple[int, int, int], steps: int = 2
) -> mx.mod.Module:
    """Train a built-in ResNet a few steps with Module and save it as the built-in algorithm does
    (symbol, params of epoch 1, model-shapes.json); the stored bn_data gamma is set to 2, a value
    MXNet ignores (fix_gamma). Returns the Module bound for inference, with its label."""
    images, labels = pattern_images(8 * steps, num_classes, shape)
    batches = mx.io.NDArrayIter(
        images.transpose(0, 3, 1, 2).astype("float32"), labels.astype("float32"), batch_size=8
    )
    mx.random.seed(0)
    train = mx.mod.Module(builtin_resnet(num_layers, num_classes, shape), context=mx.cpu())
    train.fit(
        batches,
        num_epoch=1,
        optimizer="sgd",
        optimizer_params={"learning_rate": 0.05},
        initializer=mx.init.Xavier(magnitude=2),
    )
    args, auxs = train.get_params()
    args["bn_data_gamma"] = mx.nd.full(args["bn_data_gamma"].shape, 2.0)
    folder.mkdir(parents=True, exist_ok=True)
    train.symbol.save(str(folder / f"{PREFIX}-symbol.json"))
    mx.nd.save(
        str(folder / f"{PREFIX}-0001.params"),
        {**{f"arg:{k}": v for k, v in args.items()}, **{f"aux:{k}": v for k, v in auxs.items()}},
    )
    (folder / "model-shapes.json").write_text(json.dumps([{"shape": [8, *shape], "name": "data"}]))
    served = mx.mod.Module(train.symbol, context=mx.cpu())
    served.bind(
        data_shapes=[("data", (1, *shape))],
        label_shapes=[("softmax_label", (1,))],
        for_training=False,
    )
    served.set_params(args, auxs)
    return served


def module_probabilities(module: mx.mod.Module, pixels: np.ndarray) -> np.ndarray:
    """Module's own forward, one image at a time, on float32 NCHW 0–255 pixels."""
    rows = []
    for image in pixels:
        module.forward(mx.io.DataBatch([mx.nd.array(image[None])]), is_train=False)
        rows.append(module.get_outputs()[0].asnumpy()[0])
    return np.stack(rows)


def tarball(folder: Path, target: Path) -> Path:
    """model.tar.gz with the folder's files at its root, as SageMaker uploads it."""
    with tarfile.open(target, "w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return target


def png_files(folder: Path, images: np.ndarray) -> list[Path]:
    """Each image as a PNG written by Pillow (lossless: every decoder reads the same pixels)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze()).save(buffer, format="PNG")
        path = folder / f"{index:03d}.png"
        path.write_bytes(buffer.getvalue())
        paths.append(path)
    return paths


def pillow_pixels(paths: list[Path]) -> np.ndarray:
    """The reference decoding: Pillow, RGB, NCHW float32."""
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    return np.stack(arrays).transpose(0, 3, 1, 2).astype("float32")
