"""training/optimizer_state.py against MXNet's own Trainer.save_states and load_states."""

from __future__ import annotations

import pickle
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from imgcls.training.optimizer_state import arrays_path, load_optimizer, save_optimizer

OPTIMIZERS = {
    "sgd-momentum": ("sgd", {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-3}),
    "adam": ("adam", {"learning_rate": 0.01}),  # tuple states and per-index update counts
    "nag": ("nag", {"learning_rate": 0.1, "momentum": 0.9}),
    "sgd-plain": ("sgd", {"learning_rate": 0.1}),  # no state arrays at all
}
DEVICES = {  # devices, kvstore, update_on_kvstore
    "one-cpu": ([0], None, None),
    "two-cpus-local": ([0, 1], "device", False),  # gradients summed, an updater per device
    "two-cpus-kvstore": ([0, 1], "device", None),  # updates on the kvstore: MXNet's format
}


def _network(contexts: list[mx.Context]) -> gluon.HybridBlock:
    # The same names in every net: Trainer numbers the parameters in their names' order.
    net = gluon.nn.HybridSequential(prefix="net_")
    with net.name_scope():
        net.add(gluon.nn.Dense(6, activation="relu"), gluon.nn.BatchNorm(), gluon.nn.Dense(3))
    mx.random.seed(7)
    net.initialize(mx.init.Xavier(), ctx=contexts)
    net(mx.nd.zeros((2, 5), ctx=contexts[0]))
    return net


def _trainer(
    net: gluon.HybridBlock, optimizer: str, kvstore: str | None = None, on_kvstore=None
) -> gluon.Trainer:
    name, settings = OPTIMIZERS[optimizer]
    return gluon.Trainer(
        net.collect_params(), name, dict(settings), kvstore=kvstore, update_on_kvstore=on_kvstore
    )


def _step(net: gluon.HybridBlock, trainer: gluon.Trainer, contexts, seed: int) -> None:
    batch = mx.nd.array(np.random.default_rng(seed).normal(size=(4, 5)))
    parts = gluon.utils.split_and_load(batch, contexts)
    with autograd.record():
        losses = [(net(x) ** 2).sum() for x in parts]
    autograd.backward(losses)
    trainer.step(4)


def _weights(net: gluon.HybridBlock) -> list[np.ndarray]:
    """Every trained parameter's array on every device, in the network's order (BatchNorm's
    running statistics, per device, are averaged by save_parameters)."""
    params = [p for p in net.collect_params().values() if p.grad_req != "null"]
    return [a.asnumpy() for p in params for a in p.list_data()]


def _copy(net: gluon.HybridBlock, contexts, folder: Path) -> gluon.HybridBlock:
    net.save_parameters(str(folder / "weights.params"))
    other = _network(contexts)
    other.load_parameters(str(folder / "weights.params"), ctx=contexts)
    return other


@pytest.mark.parametrize("devices", DEVICES, ids=list(DEVICES))
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=list(OPTIMIZERS))
def test_a_restored_trainer_updates_as_one_restored_by_mxnet_and_as_the_uninterrupted_one(
    tmp_path, optimizer, devices
) -> None:
    indices, *kvstore = DEVICES[devices]
    contexts = [mx.cpu(i) for i in indices]
    net = _network(contexts)
    trainer = _trainer(net, optimizer, *kvstore)
    for seed in range(3):
        _step(net, trainer, contexts, seed)
    trainer.save_states(str(tmp_path / "mxnet.states"))
    save_optimizer(trainer, tmp_path / "imgcls.states")
    by_mxnet, by_imgcls = _copy(net, contexts, tmp_path), _copy(net, contexts, tmp_path)
    mxnet_trainer = _trainer(by_mxnet, optimizer, *kvstore)
    mxnet_trainer.load_states(str(tmp_path / "mxnet.states"))
    imgcls_trainer = _trainer(by_imgcls, optimizer, *kvstore)
    load_optimizer(imgcls_trainer, tmp_path / "imgcls.states")
    for seed in (3, 4):
        for a_net, a_trainer in ((net, trainer), (by_mxnet, mxnet_trainer)):
            _step(a_net, a_trainer, contexts, seed)
        _step(by_imgcls, imgcls_trainer, contexts, seed)
    straight, reference, found = _weights(net), _weights(by_mxnet), _weights(by_imgcls)
    for mine, theirs, uninterrupted in zip(found, reference, straight, strict=True):
        np.testing.assert_array_equal(mine, theirs)
        np.testing.assert_array_equal(mine, uninterrupted)
    assert imgcls_trainer.optimizer.num_update == mxnet_trainer.optimizer.num_update == 5
    if not imgcls_trainer._update_on_kvstore:  # one optimizer for every device, as in MXNet
        assert all(u.optimizer is imgcls_trainer.optimizer for u in imgcls_trainer._updaters)
    assert imgcls_trainer.optimizer.param_dict.keys() == mxnet_trainer.optimizer.param_dict.keys()


def test_the_state_arrays_are_written_apart_from_the_pickle(tmp_path) -> None:
    """MXNet's own file holds the momentum inside its pickle; here the pickle holds keys and
    mx.nd.save's file the arrays, each equal to the state MXNet's pickle holds."""
    net = _network([mx.cpu()])
    trainer = _trainer(net, "adam")
    _step(net, trainer, [mx.cpu()], 0)
    trainer.save_states(str(tmp_path / "mxnet.states"))
    save_optimizer(trainer, tmp_path / "imgcls.states")
    theirs, _ = pickle.loads((tmp_path / "mxnet.states").read_bytes())
    arrays = mx.nd.load(str(arrays_path(tmp_path / "imgcls.states")))
    expected = sorted(array.asnumpy().tobytes() for pair in theirs.values() for array in pair)
    assert sorted(a.asnumpy().tobytes() for a in arrays.values()) == expected
    state_bytes = sum(a.size * 4 for a in arrays.values())
    mxnet_size = (tmp_path / "mxnet.states").stat().st_size
    assert mxnet_size > state_bytes
    assert (tmp_path / "imgcls.states").stat().st_size < mxnet_size - state_bytes


def test_a_file_that_mxnets_trainer_saved_loads_too(tmp_path) -> None:
    net = _network([mx.cpu()])
    trainer = _trainer(net, "sgd-momentum")
    _step(net, trainer, [mx.cpu()], 0)
    trainer.save_states(str(tmp_path / "mxnet.states"))
    restored = _trainer(_copy(net, [mx.cpu()], tmp_path), "sgd-momentum")
    load_optimizer(restored, tmp_path / "mxnet.states")
    mine = restored._updaters[0].states
    theirs = trainer._updaters[0].states
    assert mine.keys() == theirs.keys()
    for index, state in theirs.items():
        np.testing.assert_array_equal(mine[index].asnumpy(), state.asnumpy())
