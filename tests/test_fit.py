"""The fit loop's pieces: device split, evaluation over exactly every sample, im2rec records."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from conftest import pattern_image
from mxnet import gluon

from imgcls.data.recordio import record_index, record_iter, scan_records
from imgcls.training.loop import Learner, evaluate, train_step
from imgcls.training.metrics import classification_metrics

IM2REC = Path(mx.__file__).parent / "tools" / "im2rec.py"


def dense_learner(contexts: list[mx.Context]) -> Learner:
    """A network without BatchNorm, so that splitting the batch must not change the update."""
    mx.random.seed(3)
    net = gluon.nn.HybridSequential()
    net.add(gluon.nn.Dense(8, activation="relu", in_units=5), gluon.nn.Dense(3, in_units=8))
    net.initialize(mx.init.Xavier(), ctx=contexts)
    trainer = gluon.Trainer(
        net.collect_params(),
        "sgd",
        {"learning_rate": 0.5, "momentum": 0.9},
        kvstore="device" if len(contexts) > 1 else None,
    )
    return Learner(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), contexts)


def test_batch_split_over_two_devices_gives_the_same_update_as_one() -> None:
    rng = np.random.default_rng(0)
    data = mx.nd.array(rng.normal(size=(10, 5)))
    label = mx.nd.array(rng.integers(0, 3, 10))
    one, two = dense_learner([mx.cpu(0)]), dense_learner([mx.cpu(0), mx.cpu(1)])
    initial = one.net[0].weight.data().asnumpy().copy()
    for _ in range(3):
        train_step(one, data, label)
        train_step(two, data, label)
    for (name, p1), p2 in zip(
        one.net.collect_params().items(), two.net.collect_params().values(), strict=True
    ):
        for copy in p2.list_data():
            np.testing.assert_allclose(
                p1.data().asnumpy(), copy.asnumpy(), rtol=1e-5, atol=1e-6, err_msg=name
            )
    assert not np.allclose(one.net[0].weight.data().asnumpy(), initial)


def write_image_folders(root: Path, per_class: int, suffix: str) -> None:
    rng = np.random.default_rng(1)
    for label in range(3):
        folder = root / f"class{label}"
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = pattern_image(label, 20, 3, rng)
            cv2.imwrite(str(folder / f"{index}{suffix}"), image[:, :, ::-1])


def im2rec(*args: str) -> None:
    subprocess.run([sys.executable, str(IM2REC), *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def listed_folders(tmp_path_factory) -> tuple[Path, Path]:
    """Class folders of PNGs and the .lst `im2rec.py --list --recursive` makes of them, once."""
    root = tmp_path_factory.mktemp("listed")
    write_image_folders(root / "images", per_class=7, suffix=".png")
    im2rec("--list", "--recursive", str(root / "data"), str(root / "images"))
    return root / "images", root / "data.lst"


@pytest.mark.parametrize("pass_through", [True, False], ids=["pass-through", "re-encoded"])
def test_records_written_by_im2rec_are_read_with_their_labels(
    tmp_path, listed_folders, pass_through
) -> None:
    images, lst = listed_folders
    prefix = tmp_path / "data"
    shutil.copy(lst, f"{prefix}.lst")
    im2rec(*(["--pass-through"] if pass_through else []), str(prefix), str(images))
    listed = [line.split("\t") for line in Path(f"{prefix}.lst").read_text().splitlines()]
    expected = np.bincount([int(float(row[1])) for row in listed], minlength=3)
    rec = Path(f"{prefix}.rec")
    stats = scan_records([rec], num_classes=3, min_size=(16, 16))
    assert stats.count == 21 and stats.class_counts.tolist() == expected.tolist()
    assert (stats.min_height, stats.min_width) == (20, 20)

    index = record_index(stats, tmp_path / "unused.idx")
    assert index == Path(f"{prefix}.idx")  # im2rec.py's own index, which matches
    batches = record_iter(
        [rec], index=index, image_shape=(3, 16, 16), batch_size=21, shuffle=False, augment={}
    )
    batch = next(iter(batches))
    labels = batch.label[0].asnumpy().astype(int)
    pixels = batch.data[0].asnumpy()
    assert sorted(labels.tolist()) == sorted(int(float(row[1])) for row in listed)
    # The bright quadrant (see pattern_image) survives decoding: labels and pixels agree.
    for image, label in zip(pixels, labels, strict=True):
        quadrants = [image[:, :8, :8], image[:, 8:, :8], image[:, :8, 8:], image[:, 8:, 8:]]
        assert int(np.argmax([q.mean() for q in quadrants])) == label


def test_evaluate_counts_every_sample_exactly_once(tmp_path) -> None:
    from conftest import write_rec

    # 20 samples, batches of 8: the last batch holds records 16-19 (labels 3, 2, 1, 0) and is
    # padded with records 0-3 (labels 0, 1, 2, 3).
    rec = write_rec(tmp_path / "v.rec", [0, 1, 2, 3] * 4 + [3, 2, 1, 0])
    learner = dense_learner([mx.cpu()])
    learner.net = gluon.nn.HybridSequential()
    learner.net.add(gluon.nn.Flatten(), gluon.nn.Dense(4, use_bias=False))
    learner.net.initialize()
    learner.net(mx.nd.zeros((1, 3, 16, 16)))
    learner.net[1].weight.set_data(mx.nd.array(quadrant_weights()))
    metric = classification_metrics(None)
    index = record_index(scan_records([rec], num_classes=4), tmp_path / "v.idx")
    batches = record_iter(
        [rec], index=index, image_shape=(3, 16, 16), batch_size=8, shuffle=False, augment={}
    )
    evaluate(learner, batches, metric)
    assert metric.metrics[0].num_inst == 20
    # The right rows of the padded last batch: every record, read by MXNet's own reader and
    # scored at once, gives the same count of right answers.
    reader, images, labels = mx.recordio.MXRecordIO(str(rec), "r"), [], []
    while (raw := reader.read()) is not None:
        header, image = mx.recordio.unpack_img(raw)
        images.append(image[:, :, ::-1].transpose(2, 0, 1))
        labels.append(header.label)
    predicted = learner.net(mx.nd.array(np.stack(images))).asnumpy().argmax(axis=1)
    assert (predicted == np.array(labels)).all()  # the quadrant classifier is always right
    assert metric.metrics[0].sum_metric == 20


def quadrant_weights() -> np.ndarray:
    """A dense layer over 3x16x16 pixels whose class c is the mean of quadrant c (the pattern
    images' brightest quadrant is their label): it classifies them all right."""
    weights = np.zeros((4, 3, 16, 16), dtype=np.float32)
    for label, (rows, cols) in enumerate([(0, 0), (8, 0), (0, 8), (8, 8)]):
        weights[label, :, rows : rows + 8, cols : cols + 8] = 1 / (3 * 64)
    return weights.reshape(4, -1)


def resnet_learner(contexts: list[mx.Context]) -> Learner:
    """A small ResNet (BatchNorm included), hybridized as build_learner does."""
    from imgcls.model.networks import build_network

    mx.random.seed(4)
    net = build_network(20, 3, (3, 16, 16))
    net.initialize(mx.init.Xavier(), ctx=contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(
        net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9}, kvstore=None
    )
    return Learner(net, trainer, gluon.loss.SoftmaxCrossEntropyLoss(), contexts)


def test_predictions_of_a_short_batch_follow_the_training_weights() -> None:
    """`predict` (a second graph over the same parameters, any batch size) gives what the
    training graph gives in inference mode for those images, after every update."""
    rng = np.random.default_rng(2)
    data = mx.nd.array(rng.integers(0, 256, (8, 3, 16, 16)), dtype="uint8")
    label = mx.nd.array(rng.integers(0, 3, 8))
    learner = resnet_learner([mx.cpu()])
    seen = []
    for _ in range(3):
        train_step(learner, data, label)
        reference = learner.forward(data)[0].asnumpy()  # full batch, the training graph's shape
        short = learner.predict(data[:5])[0].asnumpy()
        np.testing.assert_allclose(short, reference[:5], rtol=1e-4, atol=1e-5)
        seen.append(short)
    assert not np.allclose(seen[0], seen[-1])  # the updates reached the second graph


def test_a_batch_smaller_than_the_devices_is_predicted_on_the_first_ones() -> None:
    data = mx.nd.array(np.random.default_rng(3).integers(0, 256, (1, 3, 16, 16)), dtype="uint8")
    two = resnet_learner([mx.cpu(0), mx.cpu(1)])
    outputs = two.predict(data)
    assert len(outputs) == 1
    one = resnet_learner([mx.cpu(0)])
    one.net(data.astype("float32"))  # deferred initialisation; then two's weights
    for mine, theirs in zip(
        one.net.collect_params().values(), two.net.collect_params().values(), strict=True
    ):
        mine.set_data(theirs.data(mx.cpu(0)))
    expected = one.net(data.astype("float32")).asnumpy()  # the one-device network itself
    np.testing.assert_allclose(outputs[0].asnumpy(), expected, rtol=1e-4, atol=1e-5)


def test_inference_runs_in_calls_of_bounded_pixels_with_the_training_graphs_outputs(
    monkeypatch,
) -> None:
    """`predict` cuts each device's slice into calls of at most INFERENCE_PIXELS pixels; the
    outputs, put back in order, are the training graph's for the whole batch."""
    from imgcls.training import loop

    assert [loop.inference_images(s) for s in [(224, 224), (112, 112), (32, 32)]] == [16, 64, 784]
    assert loop.inference_images((4000, 4000)) == 1
    monkeypatch.setattr(loop, "INFERENCE_PIXELS", 3 * 16 * 16)
    calls = []
    infer = Learner._infer

    def recorded(self, x):
        calls.append((x.context, x.shape[0]))
        return infer(self, x)

    monkeypatch.setattr(Learner, "_infer", recorded)
    rng = np.random.default_rng(5)
    data = mx.nd.array(rng.integers(0, 256, (10, 3, 16, 16)), dtype="uint8")
    learner = resnet_learner([mx.cpu(0), mx.cpu(1)])
    train_step(learner, data, mx.nd.array(rng.integers(0, 3, 10)))
    outputs = learner.predict(data)
    assert calls == [(mx.cpu(0), 3), (mx.cpu(0), 2), (mx.cpu(1), 3), (mx.cpu(1), 2)]
    reference = learner.forward(data)  # the training graph, five images a device
    for predicted, expected in zip(outputs, reference, strict=True):
        np.testing.assert_allclose(predicted.asnumpy(), expected.asnumpy(), rtol=1e-4, atol=1e-5)
