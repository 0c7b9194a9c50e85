"""The recipe extensions: each changes what it should, checked against a formula written here."""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS, balanced_labels
from mxnet import autograd, gluon

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.errors import HyperparameterError
from imgcls.training.loop import Learner, train_step
from imgcls.training.optimizer import optimizer_params
from imgcls.training.resume import ResumeState
from imgcls.training.schedule import schedule
from imgcls.training.session import build_learner
from imgcls.training.targets import SoftTargets

BASE_LR = 0.1
PER_EPOCH = 4  # num_training_samples 8 / mini_batch_size 2


def hyperparameters(**values: str):
    return parse_hyperparameters(
        {
            "num_classes": "4",
            "num_training_samples": "8",
            "mini_batch_size": "2",
            "learning_rate": str(BASE_LR),
            "num_layers": "20",
            "image_shape": "3,16,16",
            **values,
        }
    )


def received_rates(hp, updates: int) -> list[float]:
    """The learning rate each optimizer update applies: SGD without momentum or decay moves a
    weight whose gradient is 1 by exactly −lr."""
    weight = gluon.Parameter("w", shape=(1,), init=mx.init.Zero())
    weight.initialize(ctx=mx.cpu())
    params = {**optimizer_params(hp, schedule(hp, PER_EPOCH)), "momentum": 0.0, "wd": 0.0}
    trainer = gluon.Trainer([weight], "sgd", params, kvstore=None)
    rates = []
    for _ in range(updates):
        weight.set_data(mx.nd.zeros((1,)))
        with autograd.record():
            weight.data().sum().backward()  # gradient 1
        trainer.step(1)
        rates.append(-float(weight.data().asscalar()))
    return rates


def test_cosine_with_warmup_gives_each_update_the_formulas_rate() -> None:
    hp = hyperparameters(lr_scheduler="cosine", warmup_epochs="1", epochs="5")
    warmup, total = 1 * PER_EPOCH, 5 * PER_EPOCH

    def expected(k: int) -> float:  # update k, counted from 1
        if k < warmup:
            return BASE_LR * k / warmup
        return BASE_LR * (1 + math.cos(math.pi * (k - warmup) / (total - warmup))) / 2

    rates = received_rates(hp, total)
    for k in (1, warmup - 1, warmup, warmup + 1, total // 2, total - 1, total):
        assert rates[k - 1] == pytest.approx(expected(k), rel=1e-5, abs=1e-7), k
    assert rates[total // 2 - 1] < BASE_LR * 0.9  # it decays: not the constant rate


def test_step_with_warmup_gives_each_update_the_formulas_rate() -> None:
    hp = hyperparameters(warmup_epochs="1", lr_scheduler_step="2,4", epochs="5")
    warmup = PER_EPOCH
    boundaries = (2 * PER_EPOCH, 4 * PER_EPOCH)

    def expected(k: int) -> float:
        if k < warmup:
            return BASE_LR * k / warmup
        return BASE_LR * 0.1 ** sum(k > b for b in boundaries)

    rates = received_rates(hp, 5 * PER_EPOCH)
    checked = (1, warmup - 1, warmup, *boundaries, *(b + 1 for b in boundaries), 5 * PER_EPOCH)
    for k in checked:
        assert rates[k - 1] == pytest.approx(expected(k), rel=1e-5), k


def test_warmup_alone_then_constant_rate() -> None:
    rates = received_rates(hyperparameters(warmup_epochs="2", epochs="3"), 3 * PER_EPOCH)
    warmup = 2 * PER_EPOCH
    assert rates[0] == pytest.approx(BASE_LR / warmup, rel=1e-5)
    assert rates[warmup - 2] == pytest.approx(BASE_LR * (warmup - 1) / warmup, rel=1e-5)
    assert rates[warmup - 1 :] == pytest.approx([BASE_LR] * (PER_EPOCH + 1), rel=1e-5)


def test_default_schedule_is_the_builtins() -> None:
    assert schedule(hyperparameters(), PER_EPOCH) is None
    assert received_rates(hyperparameters(), 3) == pytest.approx([BASE_LR] * 3, rel=1e-5)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"warmup_epochs": "5", "epochs": "5"}, "warmup_epochs='5' must be < epochs"),
        ({"warmup_epochs": "3", "lr_scheduler_step": "2", "epochs": "5"}, "first step epoch"),
    ],
)
def test_warmup_beyond_its_schedule_is_refused(values: dict, message: str) -> None:
    with pytest.raises(HyperparameterError, match=message):
        hyperparameters(**values)


def test_label_smoothing_targets_follow_the_formula() -> None:
    labels = np.array([0, 3, 1, 1], dtype=np.float32)
    _, targets = SoftTargets(4, False, label_smoothing=0.2)(
        mx.nd.zeros((4, 1)), mx.nd.array(labels)
    )
    expected = 0.8 * np.eye(4)[labels.astype(int)] + 0.2 / 4
    np.testing.assert_allclose(targets.asnumpy(), expected, rtol=1e-6)


def test_multi_label_smoothing_targets_follow_the_formula() -> None:
    labels = np.array([[1, 0, 1], [0, 0, 1]], dtype=np.float32)
    _, targets = SoftTargets(3, True, label_smoothing=0.1)(mx.nd.zeros((2, 1)), mx.nd.array(labels))
    np.testing.assert_allclose(targets.asnumpy(), 0.9 * labels + 0.1 / 2, rtol=1e-6)


def test_smoothed_loss_is_the_cross_entropy_of_the_smoothed_targets() -> None:
    learner = build_learner(hyperparameters(label_smoothing="0.1"), [mx.cpu()], None)
    logits = np.random.default_rng(0).normal(size=(3, 4)).astype(np.float32)
    labels = np.array([2, 0, 3], dtype=np.float32)
    _, targets = learner.targets(mx.nd.zeros((3, 1)), mx.nd.array(labels))
    loss = learner.loss_fn(mx.nd.array(logits), targets).asnumpy()
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    smoothed = 0.9 * np.eye(4)[labels.astype(int)] + 0.1 / 4
    np.testing.assert_allclose(loss, -(smoothed * log_softmax).sum(axis=1), rtol=1e-5)


def drawn(seed: int, alpha: float, count: int) -> tuple[float, np.ndarray]:
    """λ and the pairing mixup draws from a generator seeded with `seed`."""
    rng = np.random.default_rng(seed)
    beta = rng.beta(alpha, alpha)
    return max(beta, 1 - beta), rng.permutation(count)


class Recording(gluon.Block):
    """A linear classifier that keeps the batches it is given."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.dense = gluon.nn.Dense(classes)
        self.seen: list[np.ndarray] = []

    def forward(self, x: mx.nd.NDArray) -> mx.nd.NDArray:
        self.seen.append(x.asnumpy())
        return self.dense(x)


@pytest.mark.parametrize("multi_label", [False, True])
def test_train_step_feeds_the_mixed_batch_and_mixed_targets(multi_label: bool) -> None:
    rng = np.random.default_rng(1)
    data = rng.uniform(0, 255, (6, 3, 4, 4)).astype(np.float32)
    if multi_label:
        labels = (rng.random((6, 3)) < 0.5).astype(np.float32)
        hard = labels
    else:
        labels = np.array([0, 1, 2, 0, 1, 2], dtype=np.float32)
        hard = np.eye(3)[labels.astype(int)]
    net = Recording(3)
    net.initialize(ctx=mx.cpu())
    seen_targets: list[np.ndarray] = []

    def loss_fn(output: mx.nd.NDArray, target: mx.nd.NDArray) -> mx.nd.NDArray:
        seen_targets.append(target.asnumpy())
        return (output * target).sum(axis=1)

    targets = SoftTargets(3, multi_label, mixup_alpha=0.4, rng=np.random.default_rng(7))
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.0})
    learner = Learner(net, trainer, loss_fn, [mx.cpu()], targets=targets)
    returned, _, _ = train_step(learner, mx.nd.array(data), mx.nd.array(labels))
    lam, order = drawn(7, 0.4, 6)
    assert 0.5 <= lam < 1
    np.testing.assert_allclose(net.seen[0], lam * data + (1 - lam) * data[order], rtol=1e-5)
    np.testing.assert_allclose(seen_targets[0], lam * hard + (1 - lam) * hard[order], rtol=1e-5)
    np.testing.assert_array_equal(returned[0].asnumpy(), labels)  # metrics get the hard labels


def test_mixup_and_smoothing_wired_from_the_hyperparameters() -> None:
    learner = build_learner(
        hyperparameters(mixup_alpha="0.2", label_smoothing="0.1"), [mx.cpu()], None
    )
    assert (learner.targets.mixup_alpha, learner.targets.label_smoothing) == (0.2, 0.1)
    assert build_learner(hyperparameters(), [mx.cpu()], None).targets is None


def exempt_parameters(net: gluon.Block) -> set[str]:
    """Biases of every layer and gamma/beta of every BatchNorm, found by walking the blocks."""
    found: set[str] = set()

    def visit(block: gluon.Block) -> None:
        if isinstance(block, gluon.nn.BatchNorm):
            found.update((block.gamma.name, block.beta.name))
        bias = getattr(block, "bias", None)
        if isinstance(bias, gluon.Parameter):
            found.add(bias.name)
        for child in block._children.values():
            visit(child)

    visit(net)
    return found


@pytest.mark.parametrize("no_bias_decay", [False, True])
def test_no_bias_decay_zeroes_the_multipliers_of_biases_and_batchnorm(no_bias_decay: bool) -> None:
    hp = hyperparameters(no_bias_decay=str(int(no_bias_decay)), weight_decay="0.01")
    learner = build_learner(hp, [mx.cpu()], None)
    exempt = exempt_parameters(learner.net)
    assert len(exempt) > 10
    params = learner.net.collect_params()
    trainable = [name for name, p in params.items() if p.grad_req != "null"]
    expected = {name: 0.0 if no_bias_decay and name in exempt else 1.0 for name in trainable}
    assert {name: params[name].wd_mult for name in trainable} == expected
    # A kvstore server gets the optimizer pickled without the parameters: it reads the indices.
    numbered = {i: p.name for i, p in learner.trainer.optimizer.param_dict.items()}
    server = pickle.loads(pickle.dumps(learner.trainer.optimizer))
    assert server.param_dict == {}
    wds = {numbered[i]: server._get_wds([i])[0] for i in numbered if numbered[i] in expected}
    assert wds == pytest.approx({name: 0.01 * mult for name, mult in expected.items()})


def test_a_resumed_job_continues_the_schedule_and_keeps_the_multipliers(tmp_path) -> None:
    hp = hyperparameters(
        lr_scheduler="cosine", warmup_epochs="1", epochs="5", no_bias_decay="1", mixup_alpha="0.2"
    )
    learner = build_learner(hp, [mx.cpu()], None)
    rng = np.random.default_rng(0)
    done = PER_EPOCH + 3
    for _ in range(done):
        data = mx.nd.array(rng.uniform(0, 255, (2, 3, 16, 16)))
        train_step(learner, data, mx.nd.array([0, 1]))
    ResumeState(tmp_path / "c", tmp_path / "m", {}).save(learner.net, learner.trainer, {})
    resumed = build_learner(hp, [mx.cpu()], None)
    ResumeState(tmp_path / "c", tmp_path / "m", {}).load(resumed.net, resumed.trainer, [mx.cpu()])
    total, warmup = 5 * PER_EPOCH, PER_EPOCH
    expected = BASE_LR * (1 + math.cos(math.pi * (done - warmup) / (total - warmup))) / 2
    assert resumed.trainer.optimizer.num_update == done
    assert resumed.trainer.learning_rate == pytest.approx(expected, rel=1e-6)
    numbered = resumed.trainer.optimizer.param_dict
    zero = {p.name for i, p in numbered.items() if resumed.trainer.optimizer._get_wds([i])[0] == 0}
    assert exempt_parameters(resumed.net) <= zero
    assert not any(name.endswith("_weight") for name in zero)


@pytest.mark.parametrize("multi_label", ["0", "1"])
def test_a_job_with_every_extension_early_stopping_and_checkpoints(make_job, multi_label):
    job = make_job()
    job.hyperparameters(
        {
            **TINY_HYPERPARAMETERS,
            "num_training_samples": "128",
            "epochs": "4",
            "multi_label": multi_label,
            "lr_scheduler": "cosine",
            "warmup_epochs": "1",
            "label_smoothing": "0.1",
            "mixup_alpha": "0.2",
            "no_bias_decay": "1",
            "early_stopping": "True",
            "early_stopping_min_epochs": "1",
            "early_stopping_patience": "1",
            "checkpoint_frequency": "2",
        }
    )
    labels = balanced_labels(128, 4)
    if multi_label == "1":
        labels = [[float(i == label) for i in range(4)] for label in labels]
    job.rec_channel("train", labels, seed=1)
    job.rec_channel("validation", labels[:64], seed=2)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Epoch[0] Validation-accuracy=" in result.stdout
    assert "Validation-endpoint_accuracy" not in result.stdout  # 16x16 images: nothing differs
    # Each model file, scored by MXNet's Module over ImageRecordIter with the accuracy written
    # here, gives the validation accuracy logged for its epoch; the best one is among them.
    logged = [float(a) for a in re.findall(r"Validation-accuracy=([0-9.]+)", result.stdout)]
    rec = job.data / "validation" / "validation.rec"
    files = sorted(int(p.stem[-4:]) for p in job.model_dir.glob("image-classification-*.params"))
    assert 1 + int(np.argmax(logged)) in files
    for epoch in files:
        scored = module_accuracy(job.model_dir, epoch, rec, multi_label == "1")
        assert scored == pytest.approx(logged[epoch - 1], abs=1e-6), (epoch, logged)


def module_accuracy(model_dir: Path, epoch: int, rec: Path, multi_label: bool) -> float:
    """Plain MXNet's accuracy of a model file on `rec`: the argmax's, or the mean over classes
    of (probability > 0.5) == label for multi-label models."""
    sym, args, auxs = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
    module = mx.mod.Module(sym, label_names=None, context=mx.cpu())
    module.bind(data_shapes=[("data", (16, 3, 16, 16))], for_training=False)
    module.set_params(args, auxs)
    width = 4 if multi_label else 1
    reader = mx.io.ImageRecordIter(
        path_imgrec=str(rec), data_shape=(3, 16, 16), batch_size=16, label_width=width
    )
    rights = []
    for batch in reader:
        module.forward(mx.io.DataBatch([batch.data[0]]), is_train=False)
        valid = 16 - batch.pad
        scores = module.get_outputs()[0].asnumpy()[:valid]
        labels = batch.label[0].asnumpy()[:valid]
        if multi_label:
            rights.append(((scores > 0.5) == (labels > 0.5)).ravel())
        else:
            rights.append(scores.argmax(axis=1) == labels)
    return float(np.concatenate(rights).mean())
