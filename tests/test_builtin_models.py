"""Models of SageMaker's built-in algorithm: served unchanged, scored in batch, continued in
incremental training; the reference is MXNet's Module on the built-in symbol itself."""

from __future__ import annotations

import json
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from builtin_support import (
    module_probabilities,
    pattern_images,
    pillow_pixels,
    png_files,
    tarball,
    trained_builtin_model,
)
from conftest import TINY_HYPERPARAMETERS, write_rec

from imgcls.errors import ClientError
from imgcls.model.artifact import load_training_weights
from imgcls.model.networks import build_network, inference_network
from imgcls.serving.batch import LocalStore, score
from imgcls.serving.predictor import load_predictor

CLASSES = 4
CASES = {"resnet20": (20, (3, 16, 16)), "resnet18": (18, (3, 32, 32))}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """{case: (model.tar.gz, Module bound for inference, PNG files)}, each built once."""
    built = {}
    for name, (num_layers, shape) in CASES.items():
        root = tmp_path_factory.mktemp(name)
        module = trained_builtin_model(root / "model", num_layers, CLASSES, shape)
        images, _ = pattern_images(6, CLASSES, shape, seed=5)
        pngs = png_files(root / "images", images)
        built[name] = (tarball(root / "model", root / "model.tar.gz"), module, pngs)
    return built


@pytest.fixture(params=sorted(CASES))
def builtin(request, models: dict):
    return models[request.param]


def test_served_probabilities_are_the_builtin_models(builtin) -> None:
    tar, module, pngs = builtin
    predictor = load_predictor(tar)
    served = np.stack([predictor.predict(p.read_bytes()) for p in pngs])
    expected = module_probabilities(module, pillow_pixels(pngs))
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert predictor.model.num_classes == CLASSES


def test_batch_scoring_of_a_builtin_model(builtin, tmp_path: Path) -> None:
    tar, module, pngs = builtin
    summary = score(load_predictor(tar), LocalStore(pngs[0].parent), LocalStore(tmp_path))
    assert (summary.scored, summary.failed) == (len(pngs), 0)
    scored = np.stack([json.loads((tmp_path / f"{p.name}.out").read_text()) for p in pngs])
    np.testing.assert_allclose(scored, module_probabilities(module, pillow_pixels(pngs)), atol=1e-5)


@pytest.mark.parametrize(
    ("num_layers", "shape"), [(20, (3, 16, 16)), (32, (1, 16, 16)), (50, (3, 36, 36))]
)
def test_incremental_training_starts_from_the_builtin_function(
    tmp_path: Path, num_layers: int, shape: tuple[int, int, int]
) -> None:
    module = trained_builtin_model(tmp_path / "model", num_layers, CLASSES, shape)
    net = build_network(num_layers, CLASSES, shape)
    net.initialize(mx.init.Xavier())  # deferred, as in training: shapes come from the weights
    expected = {"num_layers": num_layers, "num_classes": CLASSES, "image_shape": shape}
    load_training_weights(net, tarball(tmp_path / "model", tmp_path / "model.tar.gz"), expected)
    images, _ = pattern_images(5, CLASSES, shape, seed=9)
    pixels = images.transpose(0, 3, 1, 2).astype("float32")
    ours = inference_network(net, multi_label=False)(mx.nd.array(pixels)).asnumpy()
    np.testing.assert_allclose(ours, module_probabilities(module, pixels), atol=1e-5)


@pytest.fixture(scope="module")
def resnet20_model(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("builtin20")
    trained_builtin_model(root / "model", 20, CLASSES, (3, 16, 16))
    return tarball(root / "model", root / "model.tar.gz")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"num_layers": 32}, "num_layers: the model has 20, the hyperparameters ask for 32"),
        ({"num_classes": 5}, "num_classes: the model has 4, the hyperparameters ask for 5"),
        ({"image_shape": (3, 20, 20)}, r"image_shape: the model has \(3, 16, 16\)"),
    ],
)
def test_a_mismatch_says_which(resnet20_model: Path, change: dict, message: str) -> None:
    expected = {"num_layers": 20, "num_classes": CLASSES, "image_shape": (3, 16, 16), **change}
    net = build_network(expected["num_layers"], expected["num_classes"], expected["image_shape"])
    net.initialize()
    with pytest.raises(ClientError, match=message):
        load_training_weights(net, resnet20_model, expected)


def test_a_builtin_resnet18_says_what_differs(models: dict) -> None:
    tar = models["resnet18"][0]
    shape = CASES["resnet18"][1]
    net = build_network(18, CLASSES, shape)
    net.initialize()
    expected = {"num_layers": 18, "num_classes": CLASSES, "image_shape": shape}
    with pytest.raises(ClientError, match="stage1_unit1_sc_weight"):
        load_training_weights(net, tar, expected)


def test_a_training_job_continues_a_builtin_model(make_job, resnet20_model: Path) -> None:
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "1"})
    write_rec(job.data / "train" / "train.rec", [i % CLASSES for i in range(64)])
    (job.data / "model").mkdir()
    (job.data / "model" / "model.tar.gz").write_bytes(resnet20_model.read_bytes())
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Incremental training: weights loaded" in result.stderr + result.stdout
