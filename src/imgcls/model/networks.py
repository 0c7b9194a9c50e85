"""The ResNet v2 networks: the training network (raw pixels → logits) and its inference wrapper.

Both families reuse Gluon's model-zoo ResNet v2, the pre-activation network of MXNet's
`symbols/resnet.py`. Parameter names are deterministic, so weights exported by one process load
into a network built by another.
"""

from dataclasses import dataclass
from pathlib import Path

import mxnet as mx
import numpy as np
from mxnet import gluon
from mxnet.gluon import nn
from mxnet.gluon.model_zoo.vision.resnet import BasicBlockV2, BottleneckV2, ResNetV2, resnet_spec

from imgcls.config.hyperparameters.table import DEPTHS, LARGE_IMAGE_DEPTHS, SMALL_IMAGE_DEPTHS

_LARGE_SPEC = {**resnet_spec, 200: ("bottle_neck", [3, 24, 36, 3], [64, 256, 512, 1024, 2048])}
_LARGE_BLOCKS = {"basic_block": BasicBlockV2, "bottle_neck": BottleneckV2}
_SMALL_CHANNELS = [16, 16, 32, 64]

# ImageNet statistics of 0–255 RGB pixels; grey images use their averages.
RGB_MEAN = (123.68, 116.779, 103.939)
RGB_STD = (58.393, 57.12, 57.375)


def _pixel_stats(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of 0–255 pixels for 1 (grey) or 3 (RGB) channels."""
    mean, std = np.array(RGB_MEAN, "float32"), np.array(RGB_STD, "float32")
    if channels == 3:
        return mean, std
    if channels == 1:
        return mean.mean(keepdims=True), std.mean(keepdims=True)
    raise ValueError(f"image channels must be 1 or 3, got {channels}")


@dataclass(frozen=True)
class Structure:
    """Where a large-image network departs from the model zoo's, as built-in models do.

    MXNet's `symbols/resnet.py` gives images of at most 32 px high a 3×3 stride-1 stem without
    bn0 and max pooling (`small_stem`), and opens every stage with a projection shortcut, also
    stage 1 of the basic-block depths 18 and 34 (`stage1_projection`).
    """

    small_stem: bool = False
    stage1_projection: bool = False


MODEL_ZOO = Structure()


def structures(num_layers: int) -> list[Structure]:
    """The structures a network of that depth can be built with, the model zoo's first."""
    if num_layers in SMALL_IMAGE_DEPTHS:
        return [MODEL_ZOO]
    return [Structure(stem, projection) for stem in (False, True) for projection in (False, True)]


class ProjectedResNetV2(ResNetV2):
    """ResNet v2 whose every stage opens with a projection shortcut, as in MXNet's
    `symbols/resnet.py` (the model zoo projects only where the channel count changes)."""

    def _make_layer(self, block, layers, channels, stride, stage_index, in_channels=0):
        layer = nn.HybridSequential(prefix=f"stage{stage_index}_")
        with layer.name_scope():
            layer.add(block(channels, stride, True, in_channels=in_channels, prefix=""))
            for _ in range(layers - 1):
                layer.add(block(channels, 1, False, in_channels=channels, prefix=""))
        return layer


class CIFARResNetV2(ProjectedResNetV2):
    """CIFAR-style ResNet v2 (3×3 stem, no pooling) whose every stage opens with a projection.

    As in MXNet's `symbols/resnet.py`. GluonCV's `CIFARResNetV2` instead feeds the stem
    convolution's output to both a BatchNorm and an identity shortcut, which MXNet 1.9.1's default
    oneDNN graph fusion (`mx.mod.Module` on CPU) computes wrongly.
    """

    def __init__(self, num_layers: int, num_classes: int):
        units = (num_layers - 2) // 6
        super().__init__(
            BasicBlockV2, [units] * 3, _SMALL_CHANNELS, classes=num_classes, thumbnail=True
        )


def _backbone(num_layers: int, num_classes: int, structure: Structure) -> gluon.HybridBlock:
    """The ResNet v2 of that depth, with its `features` and its `output` classifier."""
    if structure not in structures(num_layers):
        raise ValueError(f"a ResNet-{num_layers} cannot have the structure {structure}")
    if num_layers in LARGE_IMAGE_DEPTHS:
        block, layers, channels = _LARGE_SPEC[num_layers]
        network = ProjectedResNetV2 if structure.stage1_projection else ResNetV2
        return network(
            _LARGE_BLOCKS[block], layers, channels, num_classes, thumbnail=structure.small_stem
        )
    if num_layers in SMALL_IMAGE_DEPTHS:
        return CIFARResNetV2(num_layers, num_classes)
    raise ValueError(f"num_layers must be one of {DEPTHS}, got {num_layers}")


def _learn_data_batchnorm_shift(backbone: ResNetV2) -> None:
    """Train the input BatchNorm's beta, as MXNet's `symbols/resnet.py` does for `bn_data`.

    The model zoo's input BatchNorm has no trainable parameter, so autograd skips its backward
    pass, where MXNet updates running statistics: they would stay at 0 and 1, and inference
    would see differently scaled inputs than training.
    """
    data_norm = backbone.features[0]
    backbone.features.register_child(
        nn.BatchNorm(scale=False, center=True, prefix=data_norm.prefix), "0"
    )


class ImageClassifier(gluon.HybridBlock):
    """Raw 0–255 NCHW pixels → per-channel normalisation (constants) → ResNet v2 → logits."""

    def __init__(
        self, num_layers: int, num_classes: int, channels: int, structure: Structure = MODEL_ZOO
    ):
        super().__init__(prefix="imgcls_")
        mean, std = _pixel_stats(channels)
        self.structure = structure
        with self.name_scope():
            self.mean = self.params.get_constant("mean", mean)
            self.inv_std = self.params.get_constant("inv_std", 1 / std)
            self.backbone = _backbone(num_layers, num_classes, structure)
        _learn_data_batchnorm_shift(self.backbone)

    def hybrid_forward(self, F, x, mean, inv_std):
        mean = F.reshape(mean, shape=(1, -1, 1, 1))
        inv_std = F.reshape(inv_std, shape=(1, -1, 1, 1))
        return self.backbone(F.broadcast_mul(F.broadcast_sub(x, mean), inv_std))


class Probabilities(gluon.HybridBlock):
    """A training network followed by softmax, or a sigmoid per class when multi-label."""

    def __init__(self, net: gluon.HybridBlock, multi_label: bool):
        super().__init__(prefix="imgclsprob_")
        self.multi_label = multi_label
        self.net = net

    def hybrid_forward(self, F, x):
        logits = self.net(x)
        return F.sigmoid(logits) if self.multi_label else F.softmax(logits)


def build_network(
    num_layers: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    structure: Structure = MODEL_ZOO,
) -> ImageClassifier:
    """The (uninitialised) training network for `image_shape` (channels, height, width) images."""
    return ImageClassifier(num_layers, num_classes, image_shape[0], structure)


def inference_network(net: gluon.HybridBlock, multi_label: bool) -> Probabilities:
    """Wrap `net` so that it outputs probabilities; the wrapper shares `net`'s parameters."""
    return Probabilities(net, multi_label)


def load_pretrained_features(
    net: ImageClassifier, params_file: Path, ctx: mx.Context | None = None
) -> None:
    """Load a model-zoo `resnet*_v2` `.params` file into `net`'s features, not its classifier.

    Every feature parameter must be in the file with its shape (else ValueError); the file's
    classifier is ignored. Both the `save_parameters` format (structural names) and the legacy
    `save_params` one (names without the network's prefix) are understood.
    """
    stored = mx.nd.load(str(params_file))
    backbone = net.backbone
    if any("." in name for name in stored):
        full_names = {k: p.name for k, p in backbone._collect_params_with_prefix().items()}
        stored = {full_names[k]: v for k, v in stored.items() if k in full_names}
        prefix = ""
    else:
        prefix = backbone.prefix
    try:
        backbone.features.collect_params().load_dict(
            stored, ctx, allow_missing=False, ignore_extra=True, restore_prefix=prefix
        )
    except AssertionError as e:
        raise ValueError(f"{params_file} does not fit the network's features: {e}") from e
