"""Training jobs end to end: scripts/train in a subprocess on generated RecordIO channels."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import SCRIPTS, TINY_HYPERPARAMETERS, Job, balanced_labels, pattern_image

from imgcls.cli import main
from imgcls.log import logger

TRAIN_ACCURACY = re.compile(r"Epoch\[\d+\] Train-accuracy=([0-9.]+)")
VALIDATION_ACCURACY = re.compile(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)")
LOG_LINE = re.compile(r"^\[\d\d/\d\d/\d{4} \d\d:\d\d:\d\d (INFO|WARNING|ERROR) \d+\] ")


def dry_run(job: Job, monkeypatch: pytest.MonkeyPatch) -> int:
    """`scripts/train --dry-run` for `job`, in this process (no second MXNet start-up)."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job.base))
    return main(["train", "--dry-run"])


def tiny_job(make_job, name="job", train=128, validation=64, **hyperparameters):
    job = make_job(name)
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": str(train), **hyperparameters}
    )
    job.rec_channel("train", balanced_labels(train, 4), seed=1)
    if validation:
        job.rec_channel("validation", balanced_labels(validation, 4), seed=2)
    return job


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Job, subprocess.CompletedProcess]:
    """One finished job and its run, shared by the tests that only read them."""
    folder = tmp_path_factory.mktemp("trained")
    job = tiny_job(lambda name: Job(folder / name), epochs="6", top_k="2", learning_rate="0.05")
    return job, job.train()


def test_learns_a_separable_dataset_and_logs_what_tuning_jobs_parse(trained) -> None:
    job, result = trained
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), lines
    assert "Final configuration: {" in lines[0]
    validation = [float(v) for v in VALIDATION_ACCURACY.findall(result.stdout)]
    assert len(validation) == 6 and len(TRAIN_ACCURACY.findall(result.stdout)) == 6
    assert max(validation) >= 0.9, validation
    for epoch in range(6):
        assert f"Epoch[{epoch}] Train-top_k_accuracy_2=" in result.stdout
        assert f"Epoch[{epoch}] Time cost=" in result.stdout
        assert re.search(rf"Epoch\[{epoch}\] Speed: [0-9.]+ samples/sec", result.stdout)
    assert not (job.base / "output" / "failure").exists()


def test_model_loads_with_plain_mxnet_module_as_sagemaker_notebooks_do(trained) -> None:
    job, result = trained
    assert result.returncode == 0
    files = sorted(p.name for p in job.model_dir.iterdir())
    epoch = int(next(f for f in files if f.endswith(".params"))[-11:-7])
    assert {"image-classification-symbol.json", "model-shapes.json"} <= set(files)
    shapes = json.loads((job.model_dir / "model-shapes.json").read_text())
    assert shapes[0]["name"] == "data" and shapes[0]["shape"][1:] == [3, 16, 16]
    sym, arg, aux = mx.model.load_checkpoint(str(job.model_dir / "image-classification"), epoch)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (8, 3, 16, 16))])
    module.set_params(arg, aux)
    rng = np.random.default_rng(7)
    labels = [0, 1, 2, 3] * 2
    batch = np.stack([pattern_image(label, 16, 3, rng) for label in labels])
    module.forward(mx.io.DataBatch([mx.nd.array(batch.transpose(0, 3, 1, 2))]), is_train=False)
    probabilities = module.get_outputs()[0].asnumpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert (probabilities.argmax(axis=1) == labels).mean() >= 0.75
    with tarfile.open(job.base / "output" / "model.tar.gz") as archive:
        assert sorted(archive.getnames()) == files


def module_accuracy(model_dir: Path, epoch: int, rec: Path) -> float:
    """Accuracy on `rec` of model_dir's file for `epoch`, by MXNet's Module and ImageRecordIter."""
    sym, arg, aux = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (16, 3, 16, 16))])
    module.set_params(arg, aux)
    records = mx.io.ImageRecordIter(path_imgrec=str(rec), data_shape=(3, 16, 16), batch_size=16)
    right = total = 0
    for batch in records:
        module.forward(mx.io.DataBatch([batch.data[0]]), is_train=False)
        predicted = module.get_outputs()[0].asnumpy().argmax(axis=1)[: 16 - batch.pad]
        right += int((predicted == batch.label[0].asnumpy()[: 16 - batch.pad]).sum())
        total += 16 - batch.pad
    return right / total


def test_checkpoint_frequency_keeps_periodic_epochs_in_model_dir(make_job) -> None:
    job = tiny_job(make_job, train=64, epochs="4", checkpoint_frequency="2", validation=0)
    assert job.train().returncode == 0
    params = sorted(p.name for p in job.model_dir.glob("*.params"))
    assert params == ["image-classification-0002.params", "image-classification-0004.params"]


def test_each_periodic_checkpoint_holds_the_weights_of_its_epoch(make_job) -> None:
    """Scored by MXNet's Module, file N gives the validation accuracy logged for epoch N-1."""
    job = tiny_job(make_job, validation=48, epochs="6", checkpoint_frequency="2")
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    logged = [float(a) for a in VALIDATION_ACCURACY.findall(result.stdout)]
    best = 1 + int(np.argmax(logged))  # the first best: later equal figures are not stored
    files = sorted(int(p.stem[-4:]) for p in job.model_dir.glob("*.params"))
    assert files == sorted({2, 4, 6, best}), (files, logged)
    rec = job.data / "validation" / "validation.rec"
    for epoch in files:
        assert module_accuracy(job.model_dir, epoch, rec) == logged[epoch - 1], (epoch, logged)
    # Meaningful only when an early file scores otherwise than the last (so that a file holding
    # the final weights fails), and when every file differs from the others.
    assert logged[1] != logged[-1], logged
    contents = {
        (job.model_dir / f"image-classification-{e:04d}.params").read_bytes() for e in files
    }
    assert len(contents) == len(files)


def expected_stop(accuracies: list[float], min_epochs: int, patience: int, tolerance: float):
    """The epoch after which the hyperparameter table's rule stops, from the logged validation
    accuracies: an epoch improves when it beats the best so far by at least `tolerance` of it
    (the first always does); stop once `min_epochs` have run and the last `patience` did not."""
    best, stale = None, 0
    for epoch, accuracy in enumerate(accuracies):
        improves = best is None or (
            accuracy > best and (best == 0 or (accuracy - best) / best >= tolerance)
        )
        best, stale = (accuracy, 0) if improves else (best, stale + 1)
        if epoch + 1 >= min_epochs and stale >= patience:
            return epoch
    return None


def test_early_stopping_stops_when_validation_accuracy_stalls(make_job) -> None:
    # learning_rate=0 freezes the weights (BatchNorm statistics still move a little), and a 50%
    # relative tolerance leaves at most a couple of "improvements" from chance level.
    job = tiny_job(
        make_job,
        epochs="12",
        learning_rate="0",
        early_stopping="True",
        early_stopping_min_epochs="2",
        early_stopping_patience="2",
        early_stopping_tolerance="0.5",
    )
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    accuracies = [float(a) for a in VALIDATION_ACCURACY.findall(result.stdout)]
    stop = expected_stop(accuracies, min_epochs=2, patience=2, tolerance=0.5)
    assert stop == len(accuracies) - 1 < 11, accuracies
    assert f"Early stopping after epoch {stop}: no improvement for 2 epochs" in result.stdout


def test_the_stopping_rule_in_this_test_counts_as_the_table_says() -> None:
    """The reference itself, on figures whose answer is worked by hand."""
    # 0.30 -> 0.40 improves by a third (< 0.5): stale; 0.50 is +67% of 0.30: improves.
    assert expected_stop([0.3, 0.4, 0.5, 0.5, 0.5], 2, 2, 0.5) == 4
    assert expected_stop([0.3, 0.4, 0.4], 2, 2, 0.5) == 2
    assert expected_stop([0.3, 0.2, 0.2], 4, 2, 0.0) is None
    assert expected_stop([0.0, 0.1, 0.1, 0.1], 1, 2, 0.9) == 3


def test_sigterm_saves_a_resumable_state_and_the_next_run_finishes_the_epochs(make_job) -> None:
    """The reference is the same job run straight through: the interrupted and resumed one
    must end with the same model, byte for byte (weights, optimizer state, schedule, and the
    random crops of the records held in memory and mixup's pairs all go on where they stopped)."""
    settings = {
        "epochs": "4",
        "mini_batch_size": "32",
        "augmentation_type": "crop",
        "mixup_alpha": "0.2",
    }
    job = tiny_job(make_job, train=256, validation=32, **settings)
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "train")],
        env={**__import__("os").environ, "SAGEMAKER_BASE_DIR": str(job.base)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in process.stdout:
        seen.append(line)
        if "Epoch[1] Train-accuracy" in line:
            break
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    rest, _ = process.communicate(timeout=60)
    assert time.monotonic() - sent < 20
    assert process.returncode == 143, "".join(seen) + rest
    assert not (job.base / "output" / "failure").exists()
    checkpoints = job.base / "checkpoints"
    pointer = json.loads((checkpoints / "imgcls-resume.json").read_text())
    state = json.loads((checkpoints / pointer["state"] / "state.json").read_text())
    resumed_at = state["progress"]["next_epoch"]
    assert resumed_at in (2, 3)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Resuming from" in result.stdout
    epochs_run = [int(e) for e in re.findall(r"Epoch\[(\d+)\] Train-accuracy", result.stdout)]
    assert epochs_run == list(range(resumed_at, 4))
    assert list(job.model_dir.glob("*.params"))
    assert not any(checkpoints.iterdir())
    # The report covers the epochs before the interruption too, and has the kept epoch's counts.
    report = json.loads((job.base / "output" / "data" / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == [0, 1, 2, 3]
    assert sum(map(sum, report["confusion_matrix"])) == 32
    straight = tiny_job(make_job, "straight", train=256, validation=32, **settings)
    straight_run = straight.train()
    assert straight_run.returncode == 0, straight_run.stdout
    figures = re.compile(r"Epoch\[\d+\] (?:Train|Validation)-accuracy=[0-9.]+")
    logged = figures.findall("".join(seen) + rest)[: 2 * resumed_at] + figures.findall(
        result.stdout
    )
    assert logged == figures.findall(straight_run.stdout)
    kept = sorted(p.name for p in job.model_dir.glob("*.params"))
    assert kept == sorted(p.name for p in straight.model_dir.glob("*.params"))
    for name in kept:
        assert (job.model_dir / name).read_bytes() == (straight.model_dir / name).read_bytes()


def train_patched(job: Job, tmp_path: Path, monkeypatch, sitecustomize: str):
    """`job.train()` with `sitecustomize` on PYTHONPATH: a real scripts/train (the fork server
    does not take a job whose PYTHONPATH differs), whose processes each run it as they start."""
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(sitecustomize)
    with monkeypatch.context() as patched:
        patched.setenv("PYTHONPATH", f"{patches}:{os.environ.get('PYTHONPATH', '')}")
        return job.train()


KILLED_IN_EPOCH_2 = """\
import os, signal
if os.environ.get("IMGCLS_SUPERVISED"):
    from imgcls.training import loop

    train_one_epoch = loop.train_one_epoch

    def killed_in_epoch_2(epoch, *args, **kwargs):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return train_one_epoch(epoch, *args, **kwargs)

    loop.train_one_epoch = killed_in_epoch_2
"""


def test_a_sigkilled_job_resumes_from_the_exported_weights_to_the_straight_runs_model(
    make_job, tmp_path, monkeypatch
) -> None:
    """An epoch whose model was exported keeps its resume weights in the snapshot of that
    export (resume.py), not in a file of its own. A job SIGKILLed in epoch 2, resumed on a new
    host (model/ emptied, as SageMaker does not restore it), must end with the straight run's
    model files, byte for byte, and log the same figures."""
    settings = {"epochs": "4", "mini_batch_size": "32", "checkpoint_frequency": "1"}
    job = tiny_job(make_job, train=128, validation=32, **settings)
    killed = train_patched(job, tmp_path, monkeypatch, KILLED_IN_EPOCH_2)
    assert killed.returncode != 0 and "SIGKILL" in job.failure, killed.stdout + killed.stderr
    checkpoints = job.base / "checkpoints"
    pointer = json.loads((checkpoints / "imgcls-resume.json").read_text())
    state = json.loads((checkpoints / pointer["state"] / "state.json").read_text())
    resumed_at = state["progress"]["next_epoch"]
    assert resumed_at in (1, 2)
    assert state["weights"] == f"model/image-classification-{resumed_at:04d}.params"
    assert not (checkpoints / pointer["state"] / "imgcls-resume.params").exists()
    for path in job.model_dir.iterdir():
        path.unlink()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Resuming from" in result.stdout
    straight = tiny_job(make_job, "straight", train=128, validation=32, **settings)
    straight_run = straight.train()
    assert straight_run.returncode == 0, straight_run.stdout
    figures = re.compile(r"Epoch\[\d+\] (?:Train|Validation)-accuracy=[0-9.]+")
    logged = figures.findall(killed.stdout)[: 2 * resumed_at] + figures.findall(result.stdout)
    assert logged == figures.findall(straight_run.stdout)
    kept = sorted(p.name for p in straight.model_dir.iterdir())
    assert sorted(p.name for p in job.model_dir.iterdir()) == kept
    # The symbol file names its constants' initialisers by object address, which differs
    # between any two runs; the weights and the other files must be the same bytes.
    for name in (n for n in kept if not n.endswith("-symbol.json")):
        assert (job.model_dir / name).read_bytes() == (straight.model_dir / name).read_bytes()


def test_a_job_that_fails_after_an_epoch_leaves_that_epochs_state_whole(
    make_job, monkeypatch
) -> None:
    """The state of each epoch is flushed while the next one trains; a job that fails in the
    next epoch still leaves it on disk, pointed to, for a resume (here the flush is slowed
    down so that the failure comes first)."""
    from imgcls.config.environment import paths_from_env
    from imgcls.training import loop, resume
    from imgcls.training.job import run_training

    job = tiny_job(make_job, train=32, validation=0, epochs="3")
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job.base))
    flush_tree, train_one_epoch = resume._flush_tree, loop.train_one_epoch

    def slow_flush(folder: Path) -> None:
        time.sleep(1.0)
        flush_tree(folder)

    def fail_in_epoch_1(epoch: int, *args, **kwargs):
        if epoch == 1:
            raise RuntimeError("a failure in epoch 1")
        return train_one_epoch(epoch, *args, **kwargs)

    monkeypatch.setattr(resume, "_flush_tree", slow_flush)
    monkeypatch.setattr(loop, "train_one_epoch", fail_in_epoch_1)
    sigterm = signal.getsignal(signal.SIGTERM)  # the job installs its own handler
    try:
        with pytest.raises(RuntimeError, match="a failure in epoch 1"):
            run_training(paths_from_env())
    finally:
        signal.signal(signal.SIGTERM, sigterm)
    checkpoints = job.base / "checkpoints"
    pointer = json.loads((checkpoints / "imgcls-resume.json").read_text())
    state = json.loads((checkpoints / pointer["state"] / "state.json").read_text())
    assert state["progress"]["next_epoch"] == 1
    assert (checkpoints / pointer["state"] / "imgcls-resume.states").is_file()
    assert (checkpoints / pointer["state"] / "imgcls-resume.states.arrays").is_file()


def trained_arrays(model_dir: Path) -> dict[str, np.ndarray]:
    """The trained parameters (`arg:*`) of the model folder's only .params file, by MXNet."""
    (params,) = model_dir.glob("*.params")
    return {k: v.asnumpy() for k, v in mx.nd.load(str(params)).items() if k.startswith("arg:")}


def test_incremental_training_from_a_model_channel(make_job, trained) -> None:
    """At learning_rate=0 an epoch changes no trained weight: the model written holds exactly
    the model channel's (a network trained afresh, or weights lost on loading, would not)."""
    first, first_run = trained
    assert first_run.returncode == 0
    second = tiny_job(make_job, "second", epochs="1", learning_rate="0")
    (second.data / "model").mkdir()
    (second.data / "model" / "model.tar.gz").write_bytes(
        (first.base / "output" / "model.tar.gz").read_bytes()
    )
    result = second.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Incremental training: weights loaded" in result.stdout
    loaded, written = trained_arrays(first.model_dir), trained_arrays(second.model_dir)
    assert loaded.keys() == written.keys() and len(loaded) > 50
    for name, array in loaded.items():
        np.testing.assert_array_equal(written[name], array, err_msg=name)
    assert float(VALIDATION_ACCURACY.findall(result.stdout)[0]) >= 0.75

    other = tiny_job(make_job, "other", epochs="1", num_classes="5")
    (other.data / "model").mkdir()
    (other.data / "model" / "model.tar.gz").write_bytes(
        (first.base / "output" / "model.tar.gz").read_bytes()
    )
    assert other.train().returncode != 0
    assert other.failure.startswith("ClientError:") and "num_classes" in other.failure


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda job: job.rec_channel("train", [0, 1, 7, 2] * 8), "record 2 (id 2): label 7"),
        (lambda job: job.rec_channel("train", [0, 1, 2, 3] * 8, size=12), "smaller than"),
        (lambda job: job.rec_channel("train", [0, 1, 2, 3]), "fewer than mini_batch_size=16"),
        (
            lambda job: (job.data / "train").mkdir()
            or (job.data / "train/x.rec").write_bytes(b"not a recordio file at all"),
            "not a valid MXNet RecordIO file",
        ),
    ],
    ids=["label-out-of-range", "image-too-small", "too-few-images", "not-recordio"],
)
def test_bad_records_fail_with_a_client_error_naming_the_file(
    make_job, monkeypatch, setup, message
) -> None:
    job = make_job()
    job.hyperparameters(TINY_HYPERPARAMETERS)
    setup(job)
    assert dry_run(job, monkeypatch) == 1
    assert job.failure.startswith("ClientError:"), job.failure
    assert message in job.failure and str(job.data / "train") in job.failure


def write_rec_with_a_non_image(path: Path, count: int, bad: int) -> None:
    """`count` PNG records of pattern images, record `bad` holding bytes that are no image."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index, label in enumerate(balanced_labels(count, 4)):
        header = mx.recordio.IRHeader(0, float(label), index, 0)
        if index == bad:
            writer.write(mx.recordio.pack(header, b"not an image at all, " * 20))
        else:
            image = pattern_image(label, 16, 3, rng)[:, :, ::-1].copy()
            writer.write(mx.recordio.pack_img(header, image, img_fmt=".png"))
    writer.close()


@pytest.mark.parametrize("resize", [None, "20"])
def test_a_record_that_is_no_image_fails_with_a_client_error_resize_or_not(
    make_job, monkeypatch, resize
) -> None:
    """ImageRecordIter given such a record kills the job with SIGFPE, resize or not (the
    scan used to read image headers only without resize): the scan refuses it first."""
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, **({"resize": resize} if resize else {})})
    write_rec_with_a_non_image(job.data / "train" / "train.rec", 32, bad=5)
    assert dry_run(job, monkeypatch) == 1
    assert job.failure.startswith("ClientError:"), job.failure
    where = f"{job.data / 'train' / 'train.rec'}, record 5 (id 5)"
    assert f"{where} is not an image imgcls can read" in job.failure, job.failure
    assert "pack it from a JPEG or PNG file again (mxnet/tools/im2rec.py" in job.failure
    assert "send a" not in job.failure  # a request's fix, not a record's


def test_wrong_num_training_samples_is_a_warning_with_both_numbers(
    make_job, monkeypatch, caplog
) -> None:
    job = tiny_job(make_job, validation=0, num_training_samples="1000")
    logger.addHandler(caplog.handler)
    try:
        assert dry_run(job, monkeypatch) == 0
    finally:
        logger.removeHandler(caplog.handler)
    assert "num_training_samples=1000 but the train channel holds 128 images" in caplog.text


@pytest.mark.parametrize("augmentation", ["crop", "crop_color"])  # in memory; ImageRecordIter
def test_the_naive_engine_trains_exactly_what_mxnets_default_engine_trains(
    make_job, monkeypatch, augmentation
) -> None:
    """A single-host CPU job runs MXNet's NaiveEngine (training/supervisor.py); the reference is
    the same job on MXNet's default engine: the logs and the parameters must be identical."""
    monkeypatch.delenv("MXNET_ENGINE_TYPE", raising=False)
    settings = {"epochs": "2", "augmentation_type": augmentation, "image_shape": "3,14,14"}
    naive = tiny_job(make_job, "naive", **settings)
    naive_run = naive.train()
    monkeypatch.setenv("MXNET_ENGINE_TYPE", "ThreadedEnginePerDevice")
    threaded = tiny_job(make_job, "threaded", **settings)
    threaded_run = threaded.train()
    assert naive_run.returncode == threaded_run.returncode == 0, naive_run.stdout
    assert "MXNet engine: NaiveEngine" in naive_run.stdout
    assert "MXNet engine: ThreadedEnginePerDevice" in threaded_run.stdout
    figures = re.compile(r"Epoch\[\d+\] (?:Train|Validation)-\S+=[0-9.]+")
    assert figures.findall(naive_run.stdout) == figures.findall(threaded_run.stdout)
    assert len(figures.findall(naive_run.stdout)) >= 6
    kept = sorted(path.name for path in naive.model_dir.glob("*.params"))
    assert kept and kept == sorted(path.name for path in threaded.model_dir.glob("*.params"))
    for name in kept:
        assert (naive.model_dir / name).read_bytes() == (threaded.model_dir / name).read_bytes()


KILLED_BEFORE_CLEAR = """\
import os, signal
if os.environ.get("IMGCLS_SUPERVISED"):
    from imgcls.training import resume

    def killed(self):
        os.kill(os.getpid(), signal.SIGKILL)

    resume.ResumeState.clear = killed
"""


@pytest.mark.parametrize(
    "settings",
    [{"epochs": "2"}, {"epochs": "9", "learning_rate": "0", "early_stopping": "True"}],
    ids=["all-epochs", "early-stopped"],
)
def test_a_job_killed_after_its_last_epoch_resumes_without_training_again(
    make_job, tmp_path, monkeypatch, settings
) -> None:
    """The last epoch's resume state marks the job finished (and holds no optimizer state): a
    job killed before it cleared its state, resumed on a new host (model/ is not restored by
    SageMaker), trains no epoch again and packs the same model."""
    stopping = {"early_stopping_min_epochs": "1", "early_stopping_patience": "1"}
    job = tiny_job(make_job, validation=32, **settings, **stopping)
    killed = train_patched(job, tmp_path, monkeypatch, KILLED_BEFORE_CLEAR)
    assert killed.returncode != 0 and "SIGKILL" in job.failure, killed.stdout + killed.stderr
    epochs_run = len(TRAIN_ACCURACY.findall(killed.stdout))
    assert epochs_run == 2 if settings["epochs"] == "2" else 2 <= epochs_run < 9
    pointer = json.loads((job.base / "checkpoints" / "imgcls-resume.json").read_text())
    state = job.base / "checkpoints" / pointer["state"]
    assert json.loads((state / "state.json").read_text())["progress"]["next_epoch"] == int(
        settings["epochs"]
    )
    assert not list(state.glob("imgcls-resume.states*"))  # the pickle and its arrays
    models = {p.name: p.read_bytes() for p in job.model_dir.iterdir()}
    for path in job.model_dir.iterdir():
        path.unlink()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "The resumed job had finished training: nothing is retrained." in result.stdout
    assert "holds no optimizer state" in result.stdout
    assert not TRAIN_ACCURACY.findall(result.stdout)
    assert {p.name: p.read_bytes() for p in job.model_dir.iterdir()} == models
    with tarfile.open(job.base / "output" / "model.tar.gz") as archive:
        assert sorted(archive.getnames()) == sorted(models)
    assert not any((job.base / "checkpoints").iterdir())
    report = json.loads((job.base / "output" / "data" / "report.json").read_text())
    assert [e["epoch"] for e in report["epochs"]] == list(range(epochs_run))
