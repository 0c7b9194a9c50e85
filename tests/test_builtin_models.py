"""Models of SageMaker's built-in algorithm: served unchanged, scored in batch, continued in
incremental training; the reference is MXNet's Module on the built-in symbol itself."""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from builtin_support import (
    builtin_resnet,
    module_probabilities,
    pattern_images,
    pillow_pixels,
    png_files,
    tarball,
    trained_builtin_model,
)
from conftest import TINY_HYPERPARAMETERS, write_rec
from mxnet import autograd

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.config.hyperparameters.table import LARGE_IMAGE_DEPTHS
from imgcls.errors import ClientError
from imgcls.model.artifact import PREFIX, training_network
from imgcls.model.builtin import builtin_names, builtin_structure
from imgcls.model.networks import build_network, inference_network
from imgcls.serving.batch import LocalStore, score
from imgcls.serving.predictor import load_predictor
from imgcls.training.resume import ResumeState
from imgcls.training.session import build_learner, job_fingerprint

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


def _shapes(sym: mx.sym.Symbol, image_shape: tuple[int, int, int]) -> dict[str, tuple]:
    """{parameter: shape} of a symbol, inferred by MXNet for one image (nothing allocated)."""
    args, _, auxs = sym.infer_shape(data=(1, *image_shape))
    names = sym.list_arguments() + sym.list_auxiliary_states()
    return dict(zip(names, args + auxs, strict=True))


@pytest.mark.parametrize("height", [30, 36])
@pytest.mark.parametrize("num_layers", LARGE_IMAGE_DEPTHS)
def test_imgcls_network_has_the_builtin_symbols_parameters(num_layers: int, height: int) -> None:
    """resnet.py's 29–32 px stem and stage-1 projections: imgcls's network, built with the
    structure the built-in names call for, has every parameter of the symbol with its shape."""
    shape = (3, height, height)
    builtin = _shapes(builtin_resnet(num_layers, CLASSES, shape), shape)
    del builtin["data"], builtin["softmax_label"]
    structure = builtin_structure(set(builtin), num_layers, CLASSES, shape)
    net = build_network(num_layers, CLASSES, shape, structure)
    ours = _shapes(net(mx.sym.var("data")), shape)
    mapped = {theirs: ours[name] for name, theirs in builtin_names(net.backbone).items()}
    assert mapped == builtin
    assert structure.small_stem == (height <= 32)
    assert structure.stage1_projection == (num_layers in (18, 34))


def _mapped_network(tar: Path, num_layers: int, shape: tuple[int, int, int]):
    """imgcls's network holding a stored model's weights, built as a training job builds it."""
    expected = {"num_layers": num_layers, "num_classes": CLASSES, "image_shape": shape}
    return training_network(tar, expected, [mx.cpu()])


@pytest.mark.parametrize("case", sorted(CASES))
def test_incremental_training_starts_from_the_builtin_function(models: dict, case: str) -> None:
    """Before the first update imgcls's network computes the built-in model's probabilities;
    the 32 px ResNet-18 has resnet.py's 3×3 stem and stage-1 projection."""
    tar, module, pngs = models[case]
    pixels = pillow_pixels(pngs)
    net = _mapped_network(tar, *CASES[case])
    ours = inference_network(net, multi_label=False)(mx.nd.array(pixels)).asnumpy()
    np.testing.assert_allclose(ours, module_probabilities(module, pixels), atol=1e-5)


@pytest.mark.parametrize(
    ("num_layers", "shape"),
    [(32, (1, 16, 16)), (50, (3, 36, 36)), (18, (3, 34, 34))],  # 34 px: 7×7 stem, projection
)
def test_incremental_training_starts_from_other_builtin_functions(
    tmp_path: Path, num_layers: int, shape: tuple[int, int, int]
) -> None:
    module = trained_builtin_model(tmp_path / "model", num_layers, CLASSES, shape)
    net = _mapped_network(tarball(tmp_path / "model", tmp_path / "model.tar.gz"), num_layers, shape)
    images, _ = pattern_images(5, CLASSES, shape, seed=9)
    pixels = pillow_pixels(png_files(tmp_path / "images", images))[:, : shape[0]]
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
    with pytest.raises(ClientError, match=message):
        training_network(resnet20_model, expected, [mx.cpu()])


def test_a_builtin_cifar_style_resnet50_says_what_differs(tmp_path: Path) -> None:
    """Up to 28 px high, resnet.py builds ResNet-50 with 3 stages of 8 basic units: refused."""
    trained_builtin_model(tmp_path / "model", 50, CLASSES, (3, 8, 8), steps=1)
    tar = tarball(tmp_path / "model", tmp_path / "model.tar.gz")
    with pytest.raises(ClientError, match=r"missing \['bn0_beta'.*three CIFAR-style stages"):
        _mapped_network(tar, 50, (3, 8, 8))


def _trained_arrays(params: Path, leave_out: str = "") -> Counter:
    """The trained parameters (`arg:*`) of a .params file, but `leave_out`, as counts of
    (shape, bytes): what the weights are, whatever the two networks name them."""
    arrays = mx.nd.load(str(params))
    return Counter(
        (v.shape, v.asnumpy().tobytes())
        for k, v in arrays.items()
        if k.startswith("arg:") and k != leave_out
    )


def test_a_training_job_continues_a_builtin_model(
    make_job, tmp_path: Path, resnet20_model: Path
) -> None:
    """At learning_rate=0 the model written holds every weight of the built-in model exactly,
    compared by value so that no name mapping of imgcls's is trusted. Not bn_data's gamma: the
    built-in stores 2, which MXNet ignores (fix_gamma), and imgcls's input BatchNorm has none."""
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "1", "learning_rate": "0"})
    write_rec(job.data / "train" / "train.rec", [i % CLASSES for i in range(64)])
    (job.data / "model").mkdir()
    (job.data / "model" / "model.tar.gz").write_bytes(resnet20_model.read_bytes())
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Incremental training: weights loaded" in result.stderr + result.stdout
    with tarfile.open(resnet20_model) as archive:
        archive.extractall(tmp_path / "builtin")
    (builtin,) = (tmp_path / "builtin").glob("*.params")
    (written,) = job.model_dir.glob("*.params")
    weights = _trained_arrays(builtin, leave_out="arg:bn_data_gamma")
    assert weights.total() > 50
    assert not weights - _trained_arrays(written), "built-in weights the written model lacks"


def _module_scores(model_dir: Path, pixels: np.ndarray) -> np.ndarray:
    """Plain MXNet on a model folder: load_checkpoint + Module, as SageMaker's notebooks do."""
    epochs = [int(p.stem.rsplit("-", 1)[1]) for p in model_dir.glob(f"{PREFIX}-*.params")]
    sym, args, auxs = mx.model.load_checkpoint(str(model_dir / PREFIX), max(epochs))
    module = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", (1, *pixels.shape[1:]))], for_training=False)
    module.set_params(args, auxs)
    return module_probabilities(module, pixels)


def _resnet18_hyperparameters(shape: tuple[int, int, int]) -> dict:
    return {
        **TINY_HYPERPARAMETERS,
        "num_layers": "18",
        "image_shape": ",".join(map(str, shape)),
        "num_training_samples": "32",
        "epochs": "1",
    }


def _incremental_job(make_job, name: str, model: Path, shape: tuple[int, int, int]):
    """A finished one-epoch ResNet-18 job whose model channel holds `model` (a model.tar.gz)."""
    job = make_job(name)
    job.hyperparameters(_resnet18_hyperparameters(shape))
    write_rec(job.data / "train" / "train.rec", [i % CLASSES for i in range(32)], size=shape[1])
    (job.data / "model").mkdir()
    (job.data / "model" / "model.tar.gz").write_bytes(model.read_bytes())
    result = job.train()
    assert result.returncode == 0, result.stderr[-3000:]
    kept = "The model's network, kept: Structure(small_stem=True, stage1_projection=True)"
    assert kept in result.stdout + result.stderr
    return job


def test_incremental_jobs_from_a_builtin_resnet18_and_from_their_own_model(
    make_job, models: dict
) -> None:
    """The 32 px built-in ResNet-18 (3×3 stem, stage-1 projection) trains on in a real job; the
    model written loads in plain MXNet, serves the same, and is a model channel in its turn."""
    tar, builtin_module, pngs = models["resnet18"]
    shape = CASES["resnet18"][1]
    pixels = pillow_pixels(pngs)
    first = _incremental_job(make_job, "first", tar, shape)
    metadata = json.loads((first.model_dir / "imgcls-model.json").read_text())
    assert metadata["network"] == {"small_stem": True, "stage1_projection": True}
    written = _module_scores(first.model_dir, pixels)
    assert not np.allclose(written, module_probabilities(builtin_module, pixels), atol=1e-4)
    predictor = load_predictor(first.model_dir)
    served = np.stack([predictor.predict(p.read_bytes()) for p in pngs])
    np.testing.assert_allclose(served, written, atol=1e-5)
    own = first.base / "output" / "model.tar.gz"
    mapped = inference_network(_mapped_network(own, 18, shape), multi_label=False)
    np.testing.assert_allclose(mapped(mx.nd.array(pixels)).asnumpy(), written, atol=1e-4)
    second = _incremental_job(make_job, "second", own, shape)
    again = json.loads((second.model_dir / "imgcls-model.json").read_text())
    assert again["network"] == metadata["network"]


def test_a_job_from_a_builtin_resnet18_resumes_with_its_structure(tmp_path: Path, models) -> None:
    """The resume state of a job continuing a built-in ResNet-18 restores into the network the
    next run builds from the same model channel; a state of another structure is refused."""
    tar = models["resnet18"][0]
    shape = CASES["resnet18"][1]
    hp = parse_hyperparameters(_resnet18_hyperparameters(shape))
    images, labels = pattern_images(4, CLASSES, shape, seed=2)
    pixels, labels = mx.nd.array(images.transpose(0, 3, 1, 2)), mx.nd.array(labels)
    first = build_learner(hp, [mx.cpu()], tar)
    with autograd.record():
        loss = first.loss_fn(first.net(pixels), labels)
    loss.backward()
    first.trainer.step(len(labels))
    settings = hp.as_dict()
    folder, model_dir = tmp_path / "checkpoints", tmp_path / "model"
    ResumeState(folder, model_dir, job_fingerprint(settings, first.net)).save(
        first.net, first.trainer, {"next_epoch": 1}
    )
    resumed = build_learner(hp, [mx.cpu()], tar)
    ResumeState(folder, model_dir, job_fingerprint(settings, resumed.net)).load(
        resumed.net, resumed.trainer, [mx.cpu()]
    )
    expected = {n: p.data().asnumpy() for n, p in first.net.collect_params().items()}
    for name, param in resumed.net.collect_params().items():
        np.testing.assert_array_equal(param.data().asnumpy(), expected[name])
    scratch = build_learner(hp, [mx.cpu()], None)
    with pytest.raises(ClientError, match="network: checkpoint"):
        ResumeState(folder, model_dir, job_fingerprint(settings, scratch.net)).load(
            scratch.net, scratch.trainer, [mx.cpu()]
        )
