"""The resumable state in checkpoints/: kill-safe saves, and the LR schedule after a resume."""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.errors import ClientError
from imgcls.model.artifact import export_model, load_exported_weights
from imgcls.model.networks import build_network
from imgcls.system import atomic_write
from imgcls.training.checkpoints import ModelCheckpoints
from imgcls.training.loop import Learner
from imgcls.training.resume import POINTER, ResumeState
from imgcls.training.session import build_learner, restore

SHAPE = (3, 8, 8)
FINGERPRINT = {"num_layers": 20, "num_classes": 4}
# Python's audit events for every change to the file system (os.replace raises os.rename).
CHANGES = {"os.mkdir", "os.rmdir", "os.remove", "os.rename", "os.link", "os.symlink", "os.chmod"}
CHANGES |= {"os.truncate", "os.utime", "shutil.copyfile", "shutil.copystat", "shutil.rmtree"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _changes_files(event: str, args: tuple) -> bool:
    return event in CHANGES or (event == "open" and bool(args[2] & WRITE_FLAGS))


def _net_and_trainer(seed: int = 0) -> tuple[gluon.HybridBlock, gluon.Trainer]:
    mx.random.seed(seed)
    net = build_network(20, 4, SHAPE)
    net.initialize(mx.init.Xavier())
    net(mx.nd.zeros((1, *SHAPE)))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    return net, trainer


def _train_step(net: gluon.HybridBlock, trainer: gluon.Trainer, seed: int) -> None:
    x = mx.nd.array(np.random.default_rng(seed).uniform(0, 255, (4, *SHAPE)))
    with autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    trainer.step(4)


def _weights(net: gluon.HybridBlock) -> dict[str, np.ndarray]:
    return {name: p.data().asnumpy() for name, p in net.collect_params().items()}


def _momentum(trainer: gluon.Trainer) -> dict[int, np.ndarray]:
    return {i: s.asnumpy() for i, s in trainer._updaters[0].states.items() if s is not None}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _save_in_child(
    resume: ResumeState,
    net,
    trainer,
    progress: dict,
    kill_at: int | None,
    background: bool,
    exported: Path | None = None,
) -> int:
    """Save in a forked child that SIGKILLs itself just before its `kill_at`-th change to the
    file system (counted from 0; a background save's thread counts too, waited for); the
    child's wait status, or its count of changes (no kill)."""
    count = resume.folder.parent / "changes"
    pid = os.fork()
    if pid == 0:
        changes = 0

        def hook(event: str, args: tuple) -> None:
            nonlocal changes
            if _changes_files(event, args):
                if changes == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                changes += 1

        try:
            sys.addaudithook(hook)
            resume.save(net, trainer, progress, background=background, exported=exported)
            resume.wait()
            done = changes
            count.write_text(str(done))
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if kill_at is None:
        assert os.waitstatus_to_exitcode(status) == 0
        return int(count.read_text())
    return status


def _epoch_files(model_dir: Path, net: gluon.HybridBlock, epoch: int, exported: bool) -> Path:
    """model/ after `epoch`: the epoch's params file (the model export_model writes from `net`,
    or stand-in bytes) and a metadata file that each epoch replaces; the params file."""
    if exported:
        return export_model(net, model_dir, epoch, SHAPE, False, FINGERPRINT)
    path = model_dir / f"image-classification-{epoch:04d}.params"
    path.write_bytes(f"epoch {epoch}".encode() * 100)
    atomic_write(model_dir / "imgcls-model.json", lambda tmp: tmp.write_text(f'{{"v": {epoch}}}'))
    return path


@pytest.mark.parametrize("exported", [False, True], ids=["weights-saved", "weights-exported"])
@pytest.mark.parametrize("background", [False, True], ids=["flushed-in-place", "background"])
def test_a_kill_at_any_step_of_a_save_leaves_the_old_state_or_the_new_one_whole(
    tmp_path, monkeypatch, background, exported
):
    """`exported`: each epoch's weights come from the model file exported from the network
    (resume.py); the best-model policy then removes the earlier epoch's file from model/."""
    # A killed process loses nothing the kernel holds: flushing to the disk only matters when
    # the machine goes down, which cannot be tested here; skip it to keep the test quick.
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    net, trainer = _net_and_trainer()
    _train_step(net, trainer, 1)
    base = tmp_path / "base"
    model_dir = base / "model"
    model_dir.mkdir(parents=True)
    first = _epoch_files(model_dir, net, 1, exported)
    (model_dir / "model-shapes.json").write_text("[]")
    ResumeState(base / "checkpoints", model_dir, FINGERPRINT).save(
        net, trainer, {"next_epoch": 1}, exported=first if exported else None
    )
    expected = {1: (_weights(net), _momentum(trainer), _files(model_dir))}
    # Epoch 2: new weights and momentum; model/ loses a file, gains one, replaces one.
    _train_step(net, trainer, 2)
    second = _epoch_files(model_dir, net, 2, exported)
    first.unlink()
    expected[2] = (_weights(net), _momentum(trainer), _files(model_dir))
    assert any(not np.array_equal(a, expected[2][0][n]) for n, a in expected[1][0].items())
    # A state holds a weights file of its own only when there is no export to read them from.
    state = next((base / "checkpoints").glob("state-*"))
    assert (state / "imgcls-resume.params").exists() != exported

    def run(k: int | None) -> tuple[Path, Path, int | None]:
        case = tmp_path / f"kill-{k}"
        shutil.copytree(base, case)
        resume = ResumeState(case / "checkpoints", case / "model", FINGERPRINT)
        done = case / "model" / second.name if exported else None
        return case, _save_in_child(resume, net, trainer, {"next_epoch": 2}, k, background, done)

    steps = run(None)[1]
    fresh_net = _net_and_trainer(seed=5)[0]
    assert steps >= 10
    outcomes = []
    for k in range(steps + 1):
        case, status = run(k)
        if k < steps:
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, k
        # A new host: other weights, no optimizer state, a model/ that SageMaker did not restore.
        for p in fresh_net.collect_params().values():
            p.set_data(mx.nd.zeros(p.shape))
        fresh_trainer = gluon.Trainer(fresh_net.collect_params(), "sgd", {"momentum": 0.9})
        resume = ResumeState(case / "checkpoints", case / "fresh-model", FINGERPRINT)
        progress = resume.load(fresh_net, fresh_trainer, [mx.cpu()])
        epoch = progress["next_epoch"]
        weights, momentum, model_files = expected[epoch]
        loaded = _weights(fresh_net)
        assert loaded.keys() == weights.keys()
        for name, array in weights.items():
            np.testing.assert_array_equal(loaded[name], array, err_msg=f"k={k} {name}")
        loaded_momentum = _momentum(fresh_trainer)
        assert loaded_momentum.keys() == momentum.keys()
        for index, array in momentum.items():
            np.testing.assert_array_equal(loaded_momentum[index], array, err_msg=f"k={k}")
        assert _files(case / "fresh-model") == model_files, k
        outcomes.append(epoch)
        # The next save after the kill cleans up whatever the killed one left.
        resume.save(fresh_net, fresh_trainer, {"next_epoch": 3})
        entries = sorted(p.name for p in (case / "checkpoints").iterdir())
        assert len(entries) == 2 and entries[0] == POINTER and entries[1].startswith("state-"), k
        assert resume.load(fresh_net, fresh_trainer, [mx.cpu()])["next_epoch"] == 3
        shutil.rmtree(case)
    assert outcomes[-1] == 2 and 1 in outcomes and 2 in outcomes[:-1], outcomes


def _hyperparameters(**extra: str):
    return parse_hyperparameters(
        {
            "num_classes": "4",
            "num_training_samples": "64",  # 4 updates an epoch of 16
            "mini_batch_size": "16",
            "num_layers": "20",
            "image_shape": "3,8,8",
            "learning_rate": "0.5",
            "lr_scheduler_step": "2,4",
            "lr_scheduler_factor": "0.1",
            "momentum": "0",
            "weight_decay": "0",
            **extra,
        }
    )


def _sgd_step_of_ones(learner: Learner) -> None:
    """One update with every gradient 1 (a backward pass first: the trainer wants fresh ones)."""
    with autograd.record():
        loss = learner.net(mx.nd.zeros((2, *SHAPE))).sum()
    loss.backward()
    for p in learner.net.collect_params().values():
        if p.grad_req != "null":
            p.grad()[:] = 1
    learner.trainer.step(1)


def _first_update_lrs(learner: Learner) -> tuple[float, float]:
    """The learning rate of the next update, measured from the weight change it makes under a
    gradient of ones (plain SGD: w -= lr * g): by the parameter servers of a multi-host job,
    which unpickle the optimizer the trainer sends them, and by this trainer itself."""
    server_optimizer = pickle.loads(pickle.dumps(learner.trainer.optimizer, 0))
    weight = mx.nd.ones((3,))
    mx.optimizer.get_updater(server_optimizer)(0, mx.nd.ones((3,)), weight)
    on_servers = 1 - float(weight[0].asscalar())
    param = learner.net.collect_params()["imgcls_cifarresnetv20_dense0_weight"]
    before = param.data().asnumpy()
    _sgd_step_of_ones(learner)
    locally = float(np.mean(before - param.data().asnumpy()))
    return on_servers, locally


@pytest.mark.parametrize("resume_epoch", [2, 5])
@pytest.mark.parametrize("optimizer_states", [False, True], ids=["several-hosts", "one-host"])
def test_the_first_update_after_a_resume_has_the_straight_run_learning_rate(
    tmp_path, optimizer_states, resume_epoch
):
    hp = _hyperparameters()
    updates_per_epoch = 4
    first = build_learner(hp, [mx.cpu()], None)
    first.net(mx.nd.zeros((1, *SHAPE)))
    for _ in range(resume_epoch * updates_per_epoch):  # the updates a straight run has made
        _sgd_step_of_ones(first)
    # A multi-host worker's state has no optimizer state: its optimizer is on the servers.
    folder, model_dir = tmp_path / "checkpoints", tmp_path / "model"
    checkpoints = ModelCheckpoints(lambda e: None, lambda e: None, frequency=None, enabled=False)
    progress = {"next_epoch": resume_epoch, "checkpoints": checkpoints.state()}
    ResumeState(folder, model_dir, FINGERPRINT, optimizer_states).save(
        first.net, first.trainer, {**progress, "early_stopping": None}
    )
    resumed = build_learner(hp, [mx.cpu()], None)
    resumed.net(mx.nd.zeros((1, *SHAPE)))
    resume = ResumeState(folder, model_dir, FINGERPRINT, optimizer_states)
    assert restore(resume, resumed, checkpoints, None, updates_per_epoch) == resume_epoch
    # Update number resume_epoch * 4 + 1: after every step epoch s <= resume_epoch.
    expected = 0.5 * 0.1 ** sum(1 for step in (2, 4) if step <= resume_epoch)
    on_servers, locally = _first_update_lrs(resumed)  # float32 weight differences: rel 1e-3
    assert on_servers == pytest.approx(expected, rel=1e-3)
    assert locally == pytest.approx(expected, rel=1e-3)


def test_model_files_are_linked_not_copied_and_unchanged_ones_shared_across_file_systems(
    tmp_path, monkeypatch
):
    net, trainer = _net_and_trainer()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "kept.params").write_bytes(b"kept")
    (model_dir / "changed.json").write_text("1")
    resume = ResumeState(tmp_path / "checkpoints", model_dir, FINGERPRINT)
    resume.save(net, trainer, {"next_epoch": 1})
    first = resume.current() / "model"
    assert (first / "kept.params").stat().st_ino == (model_dir / "kept.params").stat().st_ino
    # model/ on another file system: links from it fail with EXDEV.
    real_link = os.link

    def link(source, target, *args, **kwargs):
        if Path(source).parent == model_dir:
            raise OSError(18, "Invalid cross-device link")
        return real_link(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "link", link)
    atomic_write(model_dir / "changed.json", lambda tmp: tmp.write_text("2"))
    resume.save(net, trainer, {"next_epoch": 2})
    second = resume.current() / "model"
    assert not first.exists()
    # The unchanged file: the first snapshot's link (itself model/'s); the changed one: a copy.
    assert (second / "kept.params").stat().st_ino == (model_dir / "kept.params").stat().st_ino
    assert (second / "changed.json").stat().st_ino != (model_dir / "changed.json").stat().st_ino
    assert (second / "changed.json").read_text() == "2"


@pytest.mark.parametrize("damage", ["truncate", "delete", "pointer"])
def test_an_incomplete_state_is_a_client_error_naming_it(tmp_path, damage):
    net, trainer = _net_and_trainer()
    resume = ResumeState(tmp_path / "checkpoints", tmp_path / "model", FINGERPRINT)
    resume.save(net, trainer, {"next_epoch": 1})
    params = resume.current() / "imgcls-resume.params"
    if damage == "truncate":
        params.write_bytes(params.read_bytes()[:100])
    elif damage == "delete":
        params.unlink()
    else:
        resume.pointer.write_text("{not json")
    with pytest.raises(ClientError, match="imgcls-resume|empty it|Empty the checkpoint") as error:
        resume.load(net, trainer, [mx.cpu()])
    if damage != "pointer":
        assert "imgcls-resume.params" in str(error.value) and "incomplete" in str(error.value)


def test_another_jobs_state_is_refused(tmp_path):
    net, trainer = _net_and_trainer()
    ResumeState(tmp_path / "c", tmp_path / "m", FINGERPRINT).save(net, trainer, {"next_epoch": 1})
    other = ResumeState(tmp_path / "c", tmp_path / "m", {**FINGERPRINT, "num_classes": 5})
    with pytest.raises(ClientError, match="num_classes: checkpoint 4, this job 5"):
        other.load(net, trainer, [mx.cpu()])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_exported_weights_load_back_bit_for_bit_in_the_networks_own_precision(tmp_path, dtype):
    """What a resume reads from an export: every parameter (BatchNorm's statistics too), in the
    network's precision, equal to the network's own before the export."""
    net, trainer = _net_and_trainer()
    _train_step(net, trainer, 1)
    if dtype == "float16":
        net.cast("float16")
    exported = export_model(net, tmp_path / "model", 1, SHAPE, False, FINGERPRINT)
    original = _weights(net)
    fresh = _net_and_trainer(seed=7)[0]
    if dtype == "float16":
        fresh.cast("float16")
    load_exported_weights(fresh, exported, [mx.cpu()])
    loaded = _weights(fresh)
    assert loaded.keys() == original.keys()
    assert any(array.dtype == np.dtype(dtype) for array in original.values())
    for name, array in original.items():  # a float16 net keeps BatchNorm's in float32
        assert loaded[name].dtype == array.dtype, name
        np.testing.assert_array_equal(loaded[name], array, err_msg=name)
