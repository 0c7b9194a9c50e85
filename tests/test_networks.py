import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon
from mxnet.gluon import nn
from mxnet.gluon.model_zoo.vision.resnet import BasicBlockV2, BottleneckV2, get_resnet

from imgcls.config.hyperparameters.table import LARGE_IMAGE_DEPTHS, SMALL_IMAGE_DEPTHS
from imgcls.model.networks import (
    RGB_MEAN,
    RGB_STD,
    build_network,
    inference_network,
    load_pretrained_features,
)

NUM_CLASSES = 5


def _pixels(shape: tuple[int, ...], seed: int = 0) -> mx.nd.NDArray:
    return mx.nd.array(np.random.default_rng(seed).uniform(0, 255, shape).astype("float32"))


def _initialised(num_layers: int, image_shape: tuple[int, int, int]) -> gluon.HybridBlock:
    net = build_network(num_layers, NUM_CLASSES, image_shape)
    net.initialize(mx.init.Xavier())
    net(_pixels((1, *image_shape)))
    return net


def _stages(backbone: gluon.HybridBlock) -> list[nn.HybridSequential]:
    return [layer for layer in backbone.features if isinstance(layer, nn.HybridSequential)]


@pytest.mark.parametrize("num_layers", LARGE_IMAGE_DEPTHS + SMALL_IMAGE_DEPTHS)
def test_every_depth_gives_one_logit_per_class(num_layers):
    net = build_network(num_layers, NUM_CLASSES, (3, 8, 8))
    net.initialize(mx.init.Xavier())
    out = net(_pixels((2, 3, 8, 8))).asnumpy()
    assert out.shape == (2, NUM_CLASSES)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("num_layers", [18, 20])
@pytest.mark.parametrize("channels", [1, 3])
def test_grey_and_rgb_images(num_layers, channels):
    net = build_network(num_layers, NUM_CLASSES, (channels, 8, 8))
    net.initialize(mx.init.Xavier())
    assert net(_pixels((3, channels, 8, 8))).shape == (3, NUM_CLASSES)


@pytest.mark.parametrize("num_layers", [0, 19, 164])
def test_unknown_depth_is_rejected(num_layers):
    with pytest.raises(ValueError, match="num_layers"):
        build_network(num_layers, NUM_CLASSES, (3, 8, 8))


def test_other_channel_counts_are_rejected():
    with pytest.raises(ValueError, match="channels"):
        build_network(20, NUM_CLASSES, (2, 8, 8))


@pytest.mark.parametrize("num_layers", [18, 34, 50, 101, 152])
def test_large_depths_have_the_model_zoo_parameters(num_layers):
    net = build_network(num_layers, NUM_CLASSES, (3, 224, 224))
    zoo = get_resnet(2, num_layers, classes=NUM_CLASSES)
    ours = net.backbone._collect_params_with_prefix()
    assert ours.keys() == zoo._collect_params_with_prefix().keys()


@pytest.mark.parametrize(
    ("num_layers", "block", "units"),
    [
        (18, BasicBlockV2, [2, 2, 2, 2]),
        (34, BasicBlockV2, [3, 4, 6, 3]),
        (50, BottleneckV2, [3, 4, 6, 3]),
        (200, BottleneckV2, [3, 24, 36, 3]),
    ],
)
def test_large_depths_stack_units_per_stage(num_layers, block, units):
    stages = _stages(build_network(num_layers, NUM_CLASSES, (3, 224, 224)).backbone)
    assert [len(stage) for stage in stages] == units
    assert all(isinstance(unit, block) for stage in stages for unit in stage)


@pytest.mark.parametrize("num_layers", SMALL_IMAGE_DEPTHS)
def test_small_depths_are_cifar_resnets(num_layers):
    net = _initialised(num_layers, (3, 8, 8))
    stages = _stages(net.backbone)
    assert [len(stage) for stage in stages] == [(num_layers - 2) // 6] * 3
    assert all(isinstance(unit, BasicBlockV2) for stage in stages for unit in stage)
    stem = net.backbone.features[1]
    assert stem.weight.shape == (16, 3, 3, 3)
    assert [stage[0].conv1.weight.shape[0] for stage in stages] == [16, 32, 64]
    assert all(stage[0].downsample is not None for stage in stages)


@pytest.mark.parametrize(("channels", "num_layers"), [(3, 20), (1, 18)])
def test_network_normalises_raw_pixels_with_imagenet_statistics(channels, num_layers):
    net = _initialised(num_layers, (channels, 8, 8))
    mean, std = np.array(RGB_MEAN), np.array(RGB_STD)
    if channels == 1:
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    x = _pixels((2, channels, 8, 8))
    normalised = (x.asnumpy() - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)
    expected = net.backbone(mx.nd.array(normalised)).asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_normalisation_constants_are_not_trained():
    net = build_network(20, NUM_CLASSES, (3, 8, 8))
    net.initialize(mx.init.Constant(0.5))
    params = net.collect_params()
    constants = [p for p in params.values() if isinstance(p, gluon.Constant)]
    np.testing.assert_allclose(constants[0].data().asnumpy(), RGB_MEAN, rtol=1e-6)
    np.testing.assert_allclose(constants[1].data().asnumpy(), 1 / np.array(RGB_STD), rtol=1e-6)
    assert all(p.grad_req == "null" for p in constants)
    before = [p.data().asnumpy().copy() for p in constants]
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": 10.0})
    with autograd.record():
        loss = net(_pixels((2, 3, 8, 8))).sum()
    loss.backward()
    trainer.step(2)
    for p, value in zip(constants, before, strict=True):
        np.testing.assert_array_equal(p.data().asnumpy(), value)


def test_softmax_probabilities_sum_to_one():
    net = _initialised(20, (3, 8, 8))
    x = _pixels((4, 3, 8, 8))
    probs = inference_network(net, multi_label=False)(x).asnumpy()
    logits = net(x).asnumpy()
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-6)


def test_multi_label_gives_a_sigmoid_per_class():
    net = _initialised(20, (3, 8, 8))
    x = _pixels((4, 3, 8, 8))
    probs = inference_network(net, multi_label=True)(x).asnumpy()
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(-net(x).asnumpy())), rtol=1e-5)
    assert ((probs > 0) & (probs < 1)).all()


def test_inference_network_shares_the_training_parameters():
    net = _initialised(20, (3, 8, 8))
    wrapper = inference_network(net, multi_label=False)
    shared = wrapper.collect_params()
    assert all(shared[name] is p for name, p in net.collect_params().items())
    x = _pixels((2, 3, 8, 8))
    before = wrapper(x).asnumpy()
    net.backbone.output.bias.set_data(mx.nd.array(np.arange(NUM_CLASSES)))
    assert not np.allclose(wrapper(x).asnumpy(), before)


def _save_zoo_resnet18(path, legacy: bool) -> gluon.HybridBlock:
    zoo = get_resnet(2, 18)
    zoo.initialize(mx.init.Xavier())
    zoo(_pixels((1, 3, 8, 8)))
    for name, p in zoo.collect_params().items():
        if name.endswith(("running_mean", "running_var")):
            p.set_data(mx.nd.random.uniform(0.5, 1.5, p.shape))
    if legacy:
        zoo.collect_params().save(str(path), strip_prefix=zoo.prefix)
    else:
        zoo.save_parameters(str(path))
    return zoo


@pytest.mark.parametrize("legacy", [False, True])
def test_load_pretrained_features_copies_features_only(tmp_path, legacy):
    zoo = _save_zoo_resnet18(tmp_path / "resnet18_v2.params", legacy)
    net = _initialised(18, (3, 8, 8))
    classifier = {n: p.data().asnumpy().copy() for n, p in net.backbone.output.params.items()}
    load_pretrained_features(net, tmp_path / "resnet18_v2.params")
    theirs = zoo.features.collect_params()
    ours = net.backbone.features.collect_params()
    assert len(ours.keys()) == len(theirs.keys()) > 50
    for (their_name, theirs_p), (our_name, ours_p) in zip(
        theirs.items(), ours.items(), strict=True
    ):
        assert our_name.endswith(their_name[len(zoo.prefix) :])
        np.testing.assert_array_equal(ours_p.data().asnumpy(), theirs_p.data().asnumpy())
    for name, p in net.backbone.output.params.items():
        np.testing.assert_array_equal(p.data().asnumpy(), classifier[name])
        assert p.shape[0] == NUM_CLASSES


def test_load_pretrained_features_refuses_another_depth(tmp_path):
    _save_zoo_resnet18(tmp_path / "resnet18_v2.params", legacy=False)
    net = _initialised(34, (3, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        load_pretrained_features(net, tmp_path / "resnet18_v2.params")


def test_input_batchnorm_running_statistics_follow_training() -> None:
    """The model zoo's input BatchNorm has no trainable parameter; ours learns its shift so that
    its backward pass runs and its running statistics are updated (else inference is off)."""
    net = build_network(20, 4, (3, 8, 8))
    net.initialize()
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.01})
    data = mx.nd.random.uniform(0, 255, (4, 3, 8, 8))
    with mx.autograd.record():
        loss = mx.gluon.loss.SoftmaxCrossEntropyLoss()(net(data), mx.nd.zeros(4))
    loss.backward()
    trainer.step(4)
    running_mean = net.backbone.features[0].running_mean.data().asnumpy()
    assert np.abs(running_mean).sum() > 0
