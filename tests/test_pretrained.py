"""use_pretrained_model=1: model-zoo weights from IMGCLS_PRETRAINED_DIR, made here by training.

The rules force 3×224×224 images and a large-image depth, so everything here is a ResNet-18 on
a few dozen generated images. The "ImageNet" file is a ResNet-18 trained briefly on the same kind
of images, saved as the model zoo saves its files, under the model zoo's name. The network ends in
a global pooling, so its weights fit any image size: the in-process training (the file, and the
fine-tuning comparison) runs on 112×112 images, about 3× cheaper; the jobs run on 224×224.
"""

from __future__ import annotations

from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import balanced_labels, pattern_image
from mxnet import autograd, gluon
from mxnet.gluon.model_zoo import model_store

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.errors import ClientError
from imgcls.model import pretrained
from imgcls.model.networks import build_network
from imgcls.training.loop import train_step
from imgcls.training.session import build_learner

SIDE = 224  # what the rules demand of a job
FEATURE_SIDE = 112  # the in-process training's images
CLASSES = 4
PRETRAINED_JOB = {
    "num_classes": str(CLASSES),
    "num_training_samples": "16",
    "num_layers": "18",
    "mini_batch_size": "4",
    "epochs": "1",
    "learning_rate": "0.01",
}


def _images(count: int, seed: int) -> tuple[mx.nd.NDArray, mx.nd.NDArray]:
    """Pattern images (bright quadrant = class) as raw NCHW pixels, and their labels."""
    rng = np.random.default_rng(seed)
    labels = balanced_labels(count, CLASSES)
    pixels = np.stack([pattern_image(label, FEATURE_SIDE, 3, rng) for label in labels])
    return mx.nd.array(pixels.transpose(0, 3, 1, 2)), mx.nd.array(labels)


def _pretrain(path: Path, steps: int = 4, batch: int = 16) -> None:
    """Train a ResNet-18 briefly and save its backbone as the model zoo saves resnet18_v2.

    Its classes are the jobs' classes shifted by one and its random draw (seed 7) is not the
    jobs', so its classifier, random or trained, is of no use to them: only its features are.
    """
    mx.random.seed(7)
    net = build_network(18, CLASSES, (3, FEATURE_SIDE, FEATURE_SIDE))
    net.initialize(mx.init.Xavier(rnd_type="gaussian", factor_type="in", magnitude=2))
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.05, "momentum": 0.9})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    pixels, labels = _images(2 * batch, seed=11)
    labels = (labels + 1) % CLASSES
    for step in range(steps):
        rows = slice(step % 2 * batch, step % 2 * batch + batch)
        with autograd.record():
            value = loss(net(pixels[rows]), labels[rows])
        value.backward()
        trainer.step(batch)
    # A hybridized network writes BatchNorm's running statistics in the backward pass without
    # telling MXNet's engine: without waitall, save_parameters may store older values.
    mx.nd.waitall()
    net.backbone.save_parameters(str(path))


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a home-made `resnet18_v2-a81db45f.params`."""
    folder = tmp_path_factory.mktemp("pretrained")
    _pretrain(folder / pretrained.file_name(18))
    return folder


def test_file_names_and_addresses_are_the_model_zoos() -> None:
    for depth, sha1 in pretrained.ZOO_SHA1.items():
        name = f"resnet{depth}_v2"
        assert model_store._model_sha1[name] == sha1
        zoo_file = f"{name}-{model_store.short_hash(name)}"
        assert pretrained.file_name(depth) == f"{zoo_file}.params"
        assert pretrained.download_url(depth) == model_store._url_format.format(
            repo_url=model_store.apache_repo_url, file_name=zoo_file
        )
    assert pretrained.file_name(18) == "resnet18_v2-a81db45f.params"
    lines = pretrained.manifest().splitlines()
    assert len(lines) == 5 and lines[0].split() == [
        pretrained.download_url(18),
        pretrained.ZOO_SHA1[18],
        "resnet18_v2-a81db45f.params",
    ]


def test_every_layer_but_the_classifier_comes_from_the_file(zoo_dir, monkeypatch) -> None:
    monkeypatch.setenv("IMGCLS_PRETRAINED_DIR", str(zoo_dir))
    hp = parse_hyperparameters({**PRETRAINED_JOB, "use_pretrained_model": "1"})
    net = build_learner(hp, [mx.cpu()], None).net
    net(mx.nd.zeros((1, 3, SIDE, SIDE)))
    stored = mx.nd.load(str(zoo_dir / pretrained.file_name(18)))
    ours = net.backbone._collect_params_with_prefix()
    assert ours.keys() == stored.keys()
    features = [name for name in ours if name.startswith("features.")]
    assert len(features) > 50
    for name in features:
        np.testing.assert_array_equal(ours[name].data().asnumpy(), stored[name].asnumpy(), name)
    for name in ("output.weight", "output.bias"):
        assert ours[name].shape == stored[name].shape
    classifier = ours["output.weight"].data().asnumpy()
    assert not np.allclose(classifier, stored["output.weight"].asnumpy())


def test_missing_weights_file_fails_the_job_naming_the_file_and_the_fix(
    make_job, tmp_path, monkeypatch
) -> None:
    job = make_job()
    job.hyperparameters({**PRETRAINED_JOB, "num_training_samples": "8", "use_pretrained_model": 1})
    job.rec_channel("train", balanced_labels(8, CLASSES), size=SIDE)
    empty = tmp_path / "no-weights"
    empty.mkdir()
    monkeypatch.setenv("IMGCLS_PRETRAINED_DIR", str(empty))
    result = job.train()
    assert result.returncode == 1, result.stdout + result.stderr
    first_line = job.failure.splitlines()[0]
    assert first_line.startswith("ClientError:")
    for words in ("resnet18_v2-a81db45f.params", str(empty), "IMGCLS_PRETRAINED_DIR"):
        assert words in job.failure
    assert "Train-accuracy" not in result.stdout


def test_resnet_200_has_no_public_weights(tmp_path) -> None:
    with pytest.raises(ClientError, match="no ImageNet weights for ResNet-200"):
        pretrained.weights_file(200, tmp_path)


def test_a_file_that_is_not_model_zoo_weights_is_a_client_error(tmp_path) -> None:
    (tmp_path / pretrained.file_name(18)).write_bytes(b"not a params file")
    net = build_network(18, CLASSES, (3, SIDE, SIDE))
    net.initialize()
    with pytest.raises(ClientError, match="resnet18_v2-a81db45f.params does not hold"):
        pretrained.load_imagenet_features(net, 18, tmp_path)


def _training_losses(use_pretrained_model: str, epochs: int = 2) -> list[float]:
    """The mean loss of every batch, before its update, through the project's own train step."""
    hp = parse_hyperparameters({**PRETRAINED_JOB, "use_pretrained_model": use_pretrained_model})
    mx.random.seed(0)
    learner = build_learner(hp, [mx.cpu()], None)
    pixels, labels = _images(16, seed=21)
    losses = []
    for _ in range(epochs):
        for first in range(0, len(labels), hp.mini_batch_size):
            rows = slice(first, first + hp.mini_batch_size)
            targets, outputs, _ = train_step(learner, pixels[rows], labels[rows])
            losses.append(learner.loss_fn(outputs[0], targets[0]).mean().asscalar())
    return losses


def test_fine_tuning_converges_faster_than_training_from_scratch(zoo_dir, monkeypatch) -> None:
    """Same 16 images, hyperparameters and seed; only use_pretrained_model differs. Criterion:
    over the second epoch (updates 5–8) the training loss averages at most 0.75× scratch's.
    Measured on 224×224 images: 0.14 vs 0.45, 0.31–0.64× over three seeds of both runs; on
    these 112×112 images: 0.033 vs 0.152 (0.21×). Without the file's weights the two runs are
    the same run (1×)."""
    monkeypatch.setenv("IMGCLS_PRETRAINED_DIR", str(zoo_dir))
    tuned = np.mean(_training_losses("1")[4:])
    scratch = np.mean(_training_losses("0")[4:])
    assert tuned <= 0.75 * scratch, (tuned, scratch)


def test_a_job_fine_tunes_from_the_file_and_logs_it(zoo_dir, make_job, monkeypatch) -> None:
    job = make_job()
    job.hyperparameters({**PRETRAINED_JOB, "use_pretrained_model": "1"})
    job.rec_channel("train", balanced_labels(16, CLASSES), size=SIDE, seed=21)
    monkeypatch.setenv("IMGCLS_PRETRAINED_DIR", str(zoo_dir))
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"loaded from {zoo_dir / pretrained.file_name(18)}" in result.stdout
    assert "Epoch[0] Train-accuracy=" in result.stdout
