import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import gluon

from imgcls.config.hyperparameters.table import LARGE_IMAGE_DEPTHS, SMALL_IMAGE_DEPTHS
from imgcls.errors import ClientError
from imgcls.model import artifact
from imgcls.model.archive import pack_model, safe_extract
from imgcls.model.artifact import (
    METADATA_FILE,
    PREFIX,
    SHAPES_FILE,
    SYMBOL_FILE,
    export_model,
    list_params_epochs,
    remove_params,
    training_network,
)
from imgcls.model.inference import load_model
from imgcls.model.networks import MODEL_ZOO, Structure, build_network, inference_network

SHAPE = (3, 8, 8)
CLASSES = 4
HYPERPARAMETERS = {"num_layers": 20, "num_classes": CLASSES, "image_shape": SHAPE}


def _pixels(n: int = 3, shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, *shape)).astype("float32")


def _trained_like(num_layers: int = 20, shape=SHAPE, seed: int = 0, structure=MODEL_ZOO):
    """An initialised network whose BatchNorm statistics are not the defaults."""
    mx.random.seed(seed)
    net = build_network(num_layers, CLASSES, shape, structure)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *shape)))
    rng = np.random.default_rng(seed)
    for name, p in net.collect_params().items():
        if name.endswith(("running_mean", "running_var", "beta")):
            p.set_data(mx.nd.array(rng.uniform(0.5, 1.5, p.shape)))
    return net


def _export(net, model_dir: Path, epoch: int = 1, shape=SHAPE, multi_label=False, **extra):
    metadata = {"num_layers": 20, "num_classes": CLASSES, **extra}
    return export_model(net, model_dir, epoch, shape, multi_label, metadata)


def _probabilities(net, x: np.ndarray, multi_label: bool = False) -> np.ndarray:
    return inference_network(net, multi_label)(mx.nd.array(x)).asnumpy()


def _module_outputs(model_dir: Path, epoch: int, x: np.ndarray) -> np.ndarray:
    """As SageMaker's notebooks load the model."""
    sym, arg_params, aux_params = mx.model.load_checkpoint(str(model_dir / PREFIX), epoch)
    mod = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    mod.bind(for_training=False, data_shapes=[("data", (1, *x.shape[1:]))])
    mod.set_params(arg_params, aux_params)
    outputs = []
    for image in x:
        mod.forward(mx.io.DataBatch([mx.nd.array(image[None])]), is_train=False)
        outputs.append(mod.get_outputs()[0].asnumpy()[0])
    return np.stack(outputs)


@pytest.fixture(scope="module")
def net():
    return _trained_like()


@pytest.mark.parametrize(
    ("num_layers", "shape", "multi_label"),
    [(20, SHAPE, False), (20, (1, 8, 8), True), (18, SHAPE, False), (50, (1, 8, 8), False)],
)
def test_export_loads_in_plain_mxnet(tmp_path, num_layers, shape, multi_label):
    net = _trained_like(num_layers, shape)
    x = _pixels(shape=shape)
    params = _export(net, tmp_path, 3, shape, multi_label, num_layers=num_layers)
    assert params == tmp_path / f"{PREFIX}-0003.params"
    expected = _probabilities(net, x, multi_label)
    np.testing.assert_allclose(_module_outputs(tmp_path, 3, x), expected, rtol=1e-5, atol=1e-7)


def test_export_writes_the_contract_files(tmp_path, net):
    _export(net, tmp_path / "model", 12, extra_setting="x")
    names = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert names == sorted([SYMBOL_FILE, f"{PREFIX}-0012.params", SHAPES_FILE, METADATA_FILE])
    shapes = json.loads((tmp_path / "model" / SHAPES_FILE).read_text())
    assert shapes == [{"name": "data", "shape": [1, *SHAPE]}]
    metadata = json.loads((tmp_path / "model" / METADATA_FILE).read_text())
    expected = {**HYPERPARAMETERS, "image_shape": [*SHAPE], "multi_label": False}
    assert metadata == {**expected, "extra_setting": "x"}


@pytest.mark.parametrize("hybridized", [False, True])
def test_export_leaves_the_training_network_as_it_was(tmp_path, hybridized):
    net = _trained_like()
    if hybridized:
        net.hybridize(static_alloc=True, static_shape=True)
    x = mx.nd.array(_pixels())
    before = (net(x).asnumpy(), net._active, list(net._flags))
    _export(net, tmp_path)
    np.testing.assert_array_equal(net(x).asnumpy(), before[0])
    assert (net._active, list(net._flags)) == before[1:]


@pytest.mark.parametrize(
    "devices", [[mx.cpu(0)], [mx.cpu(0), mx.cpu(1)], [mx.cpu(1), mx.cpu(2)]], ids=str
)
def test_export_during_training_writes_the_weights_of_that_moment(tmp_path, devices):
    # A float32 network with a copy on the CPU is exported as it is; one on other devices
    # (GPU stand-ins) through a CPU copy. Either way MXNet's Module finds in each file the
    # weights of the moment it was written, before and after an update.
    net = _trained_like()
    net.collect_params().reset_ctx(devices)
    weights = {name: p.data(devices[0]).asnumpy() for name, p in net.collect_params().items()}
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.5})
    x = _pixels()
    _export(net, tmp_path, 1)
    with mx.autograd.record():
        losses = [net(mx.nd.array(x, ctx=device)).sum() for device in devices]
    mx.autograd.backward(losses)
    trainer.step(1)
    _export(net, tmp_path, 2)
    reference = _trained_like()
    for name, p in reference.collect_params().items():
        p.set_data(mx.nd.array(weights[name]))
    expected = _probabilities(reference, x)
    np.testing.assert_allclose(_module_outputs(tmp_path, 1, x), expected, rtol=1e-5, atol=1e-7)
    for name, p in reference.collect_params().items():
        p.set_data(net.collect_params()[name].data(devices[0]).as_in_context(mx.cpu()))
    moved = _probabilities(reference, x)
    assert np.abs(moved - expected).max() > 1e-3
    np.testing.assert_allclose(_module_outputs(tmp_path, 2, x), moved, rtol=1e-5, atol=1e-7)


def test_a_float16_network_exports_a_float32_model(tmp_path):
    # MXNet has no float16 convolution on CPU: the float16 network is exported, never run.
    net = _trained_like()
    net.cast("float16")
    net.hybridize(static_alloc=True, static_shape=True)
    before = {name: p.data().asnumpy() for name, p in net.collect_params().items()}
    _export(net, tmp_path)
    _, arg_params, aux_params = mx.model.load_checkpoint(str(tmp_path / PREFIX), 1)
    assert {a.dtype for a in [*arg_params.values(), *aux_params.values()]} == {np.float32}
    reference = _trained_like()  # the same architecture, float32, holding the float16 weights
    for name, p in reference.collect_params().items():
        p.set_data(mx.nd.array(before[name].astype("float32")))
    x = _pixels()
    expected = _probabilities(reference, x)
    np.testing.assert_allclose(_module_outputs(tmp_path, 1, x), expected, rtol=1e-5, atol=1e-7)
    after = {name: p.data() for name, p in net.collect_params().items()}
    assert {name: a.dtype for name, a in after.items()} == {n: a.dtype for n, a in before.items()}
    assert np.float16 in {a.dtype for a in after.values()}
    for name, array in after.items():
        np.testing.assert_array_equal(array.asnumpy(), before[name])


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path, net, monkeypatch):
    params = _export(net, tmp_path)
    good = params.read_bytes()

    def crash(path, data):
        Path(path).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(mx.nd, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        _export(_trained_like(seed=1), tmp_path)
    assert params.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [SYMBOL_FILE, params.name, SHAPES_FILE, METADATA_FILE]
    )


def test_epochs_are_listed_and_removed(tmp_path, net):
    for epoch in (9, 2, 10):
        _export(net, tmp_path, epoch)
    assert list_params_epochs(tmp_path) == [2, 9, 10]
    remove_params(tmp_path, 9)
    assert list_params_epochs(tmp_path) == [2, 10]


def test_load_model_picks_the_highest_epoch(tmp_path, net):
    later = _trained_like(seed=1)
    _export(later, tmp_path, 10)
    _export(net, tmp_path, 9)
    _export(net, tmp_path, 2)
    x = _pixels()
    model = load_model(tmp_path)
    assert (model.epoch, model.image_shape, model.num_classes, model.multi_label) == (
        10,
        SHAPE,
        CLASSES,
        False,
    )
    assert model.metadata["num_layers"] == 20
    np.testing.assert_allclose(model.predict(x), _probabilities(later, x), rtol=1e-5)
    remove_params(tmp_path, 10)
    np.testing.assert_allclose(load_model(tmp_path).predict(x), _probabilities(net, x), rtol=1e-5)


def test_predict_refuses_a_batch_of_another_shape(tmp_path, net):
    _export(net, tmp_path)
    with pytest.raises(ValueError, match="batch"):
        load_model(tmp_path).predict(_pixels(shape=(3, 9, 8)))


def test_multi_label_model_gives_sigmoids(tmp_path, net):
    _export(net, tmp_path, multi_label=True)
    x = _pixels()
    model = load_model(tmp_path)
    assert model.multi_label
    np.testing.assert_allclose(model.predict(x), _probabilities(net, x, True), rtol=1e-5)


def test_pack_then_extract_round_trip(tmp_path, net):
    model_dir = tmp_path / "model"
    _export(net, model_dir, 4)
    (model_dir / ".hidden.tmp").write_text("partial")
    pack_model(model_dir, tmp_path / "output" / "model.tar.gz")
    with tarfile.open(tmp_path / "output" / "model.tar.gz", "r:gz") as tar:
        names = sorted(tar.getnames())
    expected = sorted([SYMBOL_FILE, f"{PREFIX}-0004.params", SHAPES_FILE, METADATA_FILE])
    assert names == expected
    assert os.listdir(tmp_path / "output") == ["model.tar.gz"]
    safe_extract(tmp_path / "output" / "model.tar.gz", tmp_path / "extracted")
    for name in expected:
        assert (tmp_path / "extracted" / name).read_bytes() == (model_dir / name).read_bytes()


def test_pack_into_the_model_folder_leaves_the_archive_out(tmp_path, net):
    _export(net, tmp_path)
    pack_model(tmp_path, tmp_path / "model.tar.gz")
    pack_model(tmp_path, tmp_path / "model.tar.gz")
    with tarfile.open(tmp_path / "model.tar.gz", "r:gz") as tar:
        assert "model.tar.gz" not in tar.getnames()
        assert len(tar.getnames()) == 4


@pytest.mark.parametrize("as_folder", [True, False])
def test_load_model_from_a_tarball(tmp_path, net, as_folder):
    _export(net, tmp_path / "model", 5)
    pack_model(tmp_path / "model", tmp_path / "channel" / "model.tar.gz")
    source = tmp_path / "channel" if as_folder else tmp_path / "channel" / "model.tar.gz"
    x = _pixels()
    model = load_model(source)
    assert model.epoch == 5
    np.testing.assert_allclose(model.predict(x), _probabilities(net, x), rtol=1e-5)
    assert os.listdir(tmp_path / "channel") == ["model.tar.gz"]


def _tar_with(tmp_path: Path, member: tarfile.TarInfo) -> Path:
    """A gzip tar holding a harmless file, then `member`."""
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        data = b"pwned" if member.isfile() else None
        member.size = len(data) if data else 0
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda root: _member(str(root / "outside" / "abs.txt")), "absolute path"),
        (lambda root: _member("../escaped.txt"), "outside"),
        (lambda root: _member("sub/../../escaped.txt"), "outside"),
        (lambda root: _member("link", tarfile.SYMTYPE, "/etc/passwd"), "symbolic link"),
        (lambda root: _member("link", tarfile.SYMTYPE, "inside.txt"), "symbolic link"),
        (lambda root: _member("hard", tarfile.LNKTYPE, "../escaped.txt"), "hard link"),
        (lambda root: _member("fifo", tarfile.FIFOTYPE), "FIFO"),
        (lambda root: _member("null", tarfile.CHRTYPE), "device"),
        (lambda root: _member("disk", tarfile.BLKTYPE), "device"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path, make, problem):
    member = make(tmp_path)
    archive = _tar_with(tmp_path, member)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    with pytest.raises(ClientError, match=problem) as raised:
        safe_extract(archive, tmp_path / "dest")
    assert member.name in str(raised.value)
    assert os.listdir(tmp_path / "dest") == []
    assert sorted(str(p) for p in tmp_path.rglob("*") if p.name != "dest") == before


def _truncated(tmp_path: Path, net) -> bytes:
    _export(net, tmp_path / "model")
    pack_model(tmp_path / "model", tmp_path / "good.tar.gz")
    data = (tmp_path / "good.tar.gz").read_bytes()
    return data[: len(data) // 2]


def _plain_tar(tmp_path: Path, net) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("x.txt")
        tar.addfile(info, io.BytesIO(b""))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "contents",
    [lambda tmp_path, net: b"not an archive at all", _truncated, _plain_tar],
    ids=["garbage", "truncated", "not-gzip"],
)
def test_safe_extract_refuses_corrupt_archives(tmp_path, net, contents):
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(contents(tmp_path, net))
    with pytest.raises(ClientError, match="model.tar.gz"):
        safe_extract(archive, tmp_path / "dest")


def test_load_model_reports_a_corrupt_tarball(tmp_path):
    (tmp_path / "model.tar.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(ClientError, match="gzip"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / SYMBOL_FILE).unlink(), SYMBOL_FILE),
        (lambda d: (d / f"{PREFIX}-0001.params").unlink(), "NNNN.params"),
        (lambda d: (d / METADATA_FILE).write_text("{not json"), METADATA_FILE),
        (lambda d: (d / METADATA_FILE).write_text('{"num_layers": 20}'), METADATA_FILE),
        (lambda d: _set_metadata(d, network={"small_stem": True}), "ResNet-20 cannot have"),
        (lambda d: _set_metadata(d, network={"stem": "3x3"}), "unexpected keyword"),
        (lambda d: (d / f"{PREFIX}-0001.params").write_bytes(b"junk"), "0001.params.*format"),
    ],
    ids=[
        "no-symbol",
        "no-params",
        "bad-json",
        "incomplete-json",
        "impossible-network",
        "unknown-network",
        "bad-params",
    ],
)
def test_load_model_explains_an_incomplete_model(tmp_path, net, damage, message):
    _export(net, tmp_path)
    damage(tmp_path)
    with pytest.raises(ClientError, match=message) as raised:
        load_model(tmp_path)
    assert str(tmp_path) in str(raised.value)


def _set_metadata(model_dir: Path, **values) -> None:
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    (model_dir / METADATA_FILE).write_text(json.dumps({**metadata, **values}))


@pytest.mark.parametrize(
    "structure",
    [Structure(stage1_projection=True), Structure(small_stem=True, stage1_projection=True)],
)
def test_a_network_structure_is_recorded_and_rebuilt(tmp_path, structure):
    """A ResNet-18 in a built-in model's structure: imgcls-model.json records it, plain MXNet
    computes what the network does, and a model channel rebuilds it with the same function."""
    shape = SHAPE
    net = _trained_like(18, shape, structure=structure)
    export_model(net, tmp_path, 1, shape, False, {"num_layers": 18, "num_classes": CLASSES})
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    assert metadata["network"] == {
        "small_stem": structure.small_stem,
        "stage1_projection": structure.stage1_projection,
    }
    x = _pixels(shape=shape)
    expected = _module_outputs(tmp_path, 1, x)
    np.testing.assert_allclose(_probabilities(net, x), expected, rtol=1e-5, atol=1e-7)
    expected_settings = {"num_layers": 18, "num_classes": CLASSES, "image_shape": shape}
    fresh = training_network(tmp_path, expected_settings, [mx.cpu()])
    assert fresh.structure == structure
    np.testing.assert_allclose(_probabilities(fresh, x), expected, rtol=1e-5, atol=1e-7)


def test_load_model_of_a_missing_folder(tmp_path):
    with pytest.raises(ClientError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_several_tarballs_are_ambiguous(tmp_path):
    (tmp_path / "a.tar.gz").write_bytes(b"")
    (tmp_path / "b.tar.gz").write_bytes(b"")
    with pytest.raises(ClientError, match="several"):
        load_model(tmp_path)


@pytest.mark.parametrize("without_metadata", [False, True])
@pytest.mark.parametrize(
    ("key", "value"), [("num_layers", 32), ("image_shape", (1, 8, 8)), ("num_classes", 5)]
)
def test_incremental_training_refuses_a_different_model(
    tmp_path, net, key, value, without_metadata
):
    _export(net, tmp_path)
    if without_metadata:
        (tmp_path / METADATA_FILE).unlink()
    with pytest.raises(ClientError, match=key) as raised:
        training_network(tmp_path, {**HYPERPARAMETERS, key: value}, [mx.cpu()])
    stored = HYPERPARAMETERS[key]
    assert f"model has {stored}, the hyperparameters ask for {value}" in str(raised.value)


@pytest.mark.parametrize("source", ["folder", "tarball", "folder-without-metadata"])
def test_incremental_training_restores_the_training_network(tmp_path, net, source):
    _export(net, tmp_path / "model", 7)
    if source == "tarball":
        pack_model(tmp_path / "model", tmp_path / "channel" / "model.tar.gz")
    if source == "folder-without-metadata":
        (tmp_path / "model" / METADATA_FILE).unlink()
    path = tmp_path / ("channel" if source == "tarball" else "model")
    fresh = training_network(path, dict(HYPERPARAMETERS, image_shape=[*SHAPE]), [mx.cpu()])
    x = mx.nd.array(_pixels())
    np.testing.assert_array_equal(fresh(x).asnumpy(), net(x).asnumpy())
    for name, p in net.collect_params().items():
        np.testing.assert_array_equal(
            fresh.collect_params()[name].data().asnumpy(), p.data().asnumpy()
        )


def test_incremental_training_refuses_weights_of_another_network(tmp_path, net):
    _export(net, tmp_path)
    params = tmp_path / f"{PREFIX}-0001.params"
    arrays = mx.nd.load(str(params))
    mx.nd.save(str(params), {k.replace("imgcls_", "other_"): v for k, v in arrays.items()})
    with pytest.raises(ClientError, match="do not fit"):
        training_network(tmp_path, HYPERPARAMETERS, [mx.cpu()])


@pytest.mark.parametrize("num_layers", LARGE_IMAGE_DEPTHS + SMALL_IMAGE_DEPTHS)
def test_architecture_is_recognised_from_parameter_shapes(num_layers):
    net = build_network(num_layers, 7, (3, 32, 32))
    sym = net(mx.sym.var("data"))
    arg_shapes, _, aux_shapes = sym.infer_shape(data=(1, 3, 32, 32))
    args = dict(zip(sym.list_arguments(), arg_shapes, strict=True))
    shapes = [shape for name, shape in args.items() if name != "data"] + aux_shapes
    assert artifact._architecture(shapes, Path("x")) == (num_layers, 7)


def test_the_archive_is_a_gzip_tar_that_gnu_tar_and_gzip_read(tmp_path, net):
    """Read by the system's own tools, not imgcls: `gzip -t` checks the stream and its CRC,
    GNU tar extracts every file byte for byte; the header names no file and no time."""
    model_dir = tmp_path / "model"
    _export(net, model_dir, 3)
    archive = tmp_path / "model.tar.gz"
    pack_model(model_dir, archive)
    subprocess.run(["gzip", "-t", str(archive)], check=True)
    # RFC 1952: magic, deflate, no flags (no name), time 0, extra flags, OS.
    assert archive.read_bytes()[:8] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
    assert archive.stat().st_size < sum(p.stat().st_size for p in model_dir.iterdir())
    (tmp_path / "by-tar").mkdir()
    subprocess.run(["tar", "-xzf", str(archive), "-C", str(tmp_path / "by-tar")], check=True)
    for path in model_dir.iterdir():
        assert (tmp_path / "by-tar" / path.name).read_bytes() == path.read_bytes()
    assert sorted(p.name for p in (tmp_path / "by-tar").iterdir()) == sorted(
        p.name for p in model_dir.iterdir()
    )
