"""LR schedule, optimizer parameters, early stopping and the model/ checkpoint policy."""

import mxnet as mx
import pytest

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.training.checkpoints import ModelCheckpoints
from imgcls.training.early_stopping import EarlyStopping
from imgcls.training.optimizer import optimizer_params
from imgcls.training.schedule import lr_scheduler, updates_per_epoch

REQUIRED = {"num_classes": "4", "num_training_samples": "100"}


def lr_at(schedule, update: int) -> float:
    return schedule(update)


def test_updates_per_epoch_come_from_num_training_samples() -> None:
    assert updates_per_epoch(100, 32) == 4
    assert updates_per_epoch(96, 32) == 3
    assert updates_per_epoch(5, 32) == 1


def test_lr_drops_exactly_after_each_step_epoch() -> None:
    schedule = lr_scheduler((2, 3), factor=0.1, base_lr=0.5, updates_per_epoch=4)
    # MXNet numbers updates from 1: epoch 0 is updates 1-4, epoch 1 is 5-8, epoch 2 is 9-12.
    assert lr_at(schedule, 8) == pytest.approx(0.5)
    assert lr_at(schedule, 9) == pytest.approx(0.05)
    assert lr_at(schedule, 12) == pytest.approx(0.05)
    assert lr_at(schedule, 13) == pytest.approx(0.005)


def test_no_steps_means_no_schedule() -> None:
    assert lr_scheduler((), 0.1, 0.1, 10) is None


@pytest.mark.parametrize(
    ("optimizer", "expected", "absent"),
    [
        ("sgd", {"momentum": 0.8, "wd": 0.001}, {"beta1", "gamma1"}),
        ("nag", {"momentum": 0.8, "wd": 0.001}, {"beta1", "gamma1"}),
        ("adam", {"beta1": 0.8, "beta2": 0.99, "epsilon": 1e-6}, {"momentum", "wd"}),
        ("rmsprop", {"gamma1": 0.7, "epsilon": 1e-6}, {"momentum", "wd", "beta1"}),
    ],
)
def test_each_optimizer_gets_exactly_its_hyperparameters(optimizer, expected, absent) -> None:
    hp = parse_hyperparameters(
        {
            **REQUIRED,
            "optimizer": optimizer,
            "momentum": "0.8",
            "weight_decay": "0.001",
            "beta_1": "0.8",
            "beta_2": "0.99",
            "eps": "1e-6",
            "gamma": "0.7",
        }
    )
    params = optimizer_params(hp, None)
    assert params["learning_rate"] == 0.1
    assert {k: params[k] for k in expected} == pytest.approx(expected)
    assert not absent & params.keys()
    mx.optimizer.create(optimizer, **params)


def test_early_stopping_waits_min_epochs_then_patience() -> None:
    early = EarlyStopping(min_epochs=3, patience=2, tolerance=0.0)
    assert not early.should_stop(1, 0.5)
    assert not early.should_stop(2, 0.4)  # 1 epoch without improvement
    assert early.should_stop(3, 0.45)  # 2 epochs without improvement, min epochs reached


def test_early_stopping_relative_tolerance() -> None:
    early = EarlyStopping(min_epochs=1, patience=1, tolerance=0.1)
    assert not early.should_stop(1, 0.5)
    assert early.should_stop(2, 0.54)  # +8% relative < 10%: no improvement
    early = EarlyStopping(min_epochs=1, patience=1, tolerance=0.1)
    early.should_stop(1, 0.5)
    assert not early.should_stop(2, 0.56)  # +12% relative: an improvement


class Recorder:
    def __init__(self) -> None:
        self.files: set[int] = set()

    def export(self, epoch: int):
        self.files.add(epoch)
        return f"model-{epoch:04d}.params"

    def remove(self, epoch: int) -> None:
        self.files.discard(epoch)


def run_policy(accuracies, frequency=None, epochs=None):
    recorder = Recorder()
    policy = ModelCheckpoints(recorder.export, recorder.remove, frequency)
    total = epochs or len(accuracies)
    for index, accuracy in enumerate(accuracies):
        policy.on_epoch_end(index + 1, accuracy, is_last=index + 1 == total)
    return recorder.files


def test_default_keeps_only_the_best_validation_epoch() -> None:
    assert run_policy([0.2, 0.5, 0.4, 0.6, 0.3]) == {4}


def test_checkpoint_frequency_keeps_every_kth_epoch_and_the_best() -> None:
    assert run_policy([0.2, 0.5, 0.4, 0.3, 0.35, 0.1], frequency=2) == {2, 4, 6}
    assert run_policy([0.2, 0.5, 0.4, 0.3, 0.9], frequency=2) == {2, 4, 5}


def test_without_validation_the_last_epoch_is_the_model() -> None:
    assert run_policy([None, None, None]) == {3}
    assert run_policy([None] * 5, frequency=2) == {2, 4, 5}


def test_best_model_log_line(caplog, monkeypatch) -> None:
    import logging

    monkeypatch.setattr(logging.getLogger("imgcls"), "propagate", True)
    with caplog.at_level(logging.INFO, logger="imgcls"):
        run_policy([0.25])
    assert "Storing the best model with validation accuracy: 0.250000" in caplog.text
    assert 'Saved checkpoint to "model-0001.params"' in caplog.text
