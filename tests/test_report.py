"""The training report in output/data/: report.json against the saved model scored by MXNet's
own Module and ImageRecordIter, scores from formulas written here, the PNGs opened with
Pillow, a self-contained HTML page, early stopping, no validation, and a plotting failure."""

from __future__ import annotations

import base64
import json
import os
import re
import tarfile
import time
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS, Job, balanced_labels
from data_support import multi_pattern_image
from PIL import Image

from imgcls.config.environment import Paths
from imgcls.training import session
from imgcls.training.report.handoff import REPORT_FD_ENV, take_hand_over
from imgcls.training.report.history import History
from imgcls.training.report.writer import ReportInputs, write_report_safely

REPORT_PNGS = ("curves.png", "confusion_matrix.png", "per_class.png")
VALIDATION = re.compile(r"Epoch\[(\d+)\] Validation-accuracy=([0-9.]+)")
TRAIN = re.compile(r"Epoch\[(\d+)\] Train-accuracy=([0-9.]+)")
# Unequal class counts: a transposed matrix has the wrong row sums.
VALIDATION_LABELS = [0] * 16 + [1] * 12 + [2] * 8 + [3] * 4


def report_of(job: Job) -> dict:
    return json.loads((job.base / "output" / "data" / "report.json").read_text())


def saved_module(model_dir: Path, shape: tuple[int, ...], batch: int) -> mx.mod.Module:
    """The newest params file of model/ (what serving loads), bound with plain MXNet."""
    epoch = max(int(p.stem.rsplit("-", 1)[1]) for p in model_dir.glob("*.params"))
    sym, arg, aux = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (batch, *shape))])
    module.set_params(arg, aux)
    return module


def module_scores(job: Job, rec: Path, label_width: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of every record of `rec`, through ImageRecordIter and Module."""
    module = saved_module(job.model_dir, (3, 16, 16), 8)
    records = mx.io.ImageRecordIter(
        path_imgrec=str(rec),
        data_shape=(3, 16, 16),
        batch_size=8,
        label_width=label_width,
        round_batch=False,
    )
    labels, scores = [], []
    for batch in records:
        valid = 8 - batch.pad
        module.forward(mx.io.DataBatch([batch.data[0]]), is_train=False)
        scores.append(module.get_outputs()[0].asnumpy()[:valid])
        labels.append(batch.label[0].asnumpy()[:valid])
    return np.concatenate(labels), np.concatenate(scores)


def assert_pictures(folder: Path, names: tuple[str, ...]) -> None:
    for name in names:
        with Image.open(folder / name) as image:
            assert image.format == "PNG"
            assert image.width >= 300 and image.height >= 200, (name, image.size)
            extrema = image.convert("RGB").getextrema()
            assert any(low != high for low, high in extrema), f"{name} is a single colour"


def assert_self_contained(folder: Path, names: tuple[str, ...]) -> None:
    """Every src/href of report.html is a data URI, and each PNG is embedded byte for byte."""
    page = (folder / "report.html").read_text()
    references = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)""", page, re.IGNORECASE)
    assert references and all(r.startswith("data:image/png;base64,") for r in references)
    assert "url(" not in page and "@import" not in page
    embedded = {base64.b64decode(r.split(",", 1)[1]) for r in references}
    assert embedded == {(folder / name).read_bytes() for name in names}


def single_label_job(tmp_path: Path, **hyperparameters: str) -> Job:
    job = Job(tmp_path / "job")
    job.hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "3", **hyperparameters})
    job.rec_channel("train", balanced_labels(64, 4), seed=1)
    job.rec_channel("validation", VALIDATION_LABELS, seed=2)
    return job


def test_the_report_holds_the_kept_models_confusion_matrix_as_mxnet_scores_it(tmp_path) -> None:
    job = single_label_job(tmp_path)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(job)

    labels, probabilities = module_scores(job, job.data / "validation" / "validation.rec")
    expected = np.zeros((4, 4), dtype=int)
    for true, predicted in zip(labels.astype(int), probabilities.argmax(axis=1), strict=True):
        expected[true, predicted] += 1
    matrix = np.array(report["confusion_matrix"])
    np.testing.assert_array_equal(matrix, expected)
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(VALIDATION_LABELS))

    # The kept epoch is the first with the best logged validation accuracy, and its
    # matrix's trace is that accuracy.
    accuracies = [float(a) for _, a in VALIDATION.findall(result.stdout)]
    kept = int(np.argmax(accuracies))
    assert report["kept_epoch"] == kept
    assert np.trace(matrix) / len(VALIDATION_LABELS) == pytest.approx(accuracies[kept], abs=1e-6)
    for row, true_positives in zip(report["per_class"], np.diag(expected), strict=True):
        predicted, actual = expected[:, row["index"]].sum(), expected[row["index"]].sum()
        precision = true_positives / predicted if predicted else 0.0
        recall = true_positives / actual
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (precision, recall, f1)
        )
        assert row["support"] == actual

    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1, 2]
    assert [e["validation"]["accuracy"] for e in epochs] == pytest.approx(accuracies, abs=1e-6)
    logged_train = [float(a) for _, a in TRAIN.findall(result.stdout)]
    assert [e["train"]["accuracy"] for e in epochs] == pytest.approx(logged_train, abs=1e-6)
    assert all(e["train"]["loss"] > 0 and e["validation"]["loss"] > 0 for e in epochs)
    assert all(e["learning_rate"] == pytest.approx(0.1) for e in epochs)
    speeds = re.findall(r"Epoch\[\d+\] Speed: ([0-9.]+) samples/sec", result.stdout)
    assert [e["images_per_second"] for e in epochs] == pytest.approx(
        [float(s) for s in speeds], abs=0.01
    )
    assert report["hyperparameters"]["num_classes"] == 4
    folder = job.base / "output" / "data"
    assert_pictures(folder, REPORT_PNGS)
    assert_self_contained(folder, REPORT_PNGS)


def write_multi_label_rec(path: Path, labels: np.ndarray, seed: int) -> Path:
    """Multi-hot records (one float label per class), packed with MXNet's recordio."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index, row in enumerate(labels):
        image = multi_pattern_image(list(np.flatnonzero(row)), 16, rng)
        header = mx.recordio.IRHeader(0, row.astype(np.float32), index, 0)
        writer.write(mx.recordio.pack_img(header, image[:, :, ::-1].copy(), img_fmt=".png"))
    writer.close()
    return path


def test_multi_label_report_counts_outcomes_and_average_precision(tmp_path) -> None:
    rng = np.random.default_rng(5)
    train = (rng.random((128, 4)) < (0.5, 0.3, 0.2, 0.4)).astype(int)
    validation = (rng.random((48, 4)) < (0.5, 0.3, 0.2, 0.4)).astype(int)
    job = Job(tmp_path / "job")
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": "128", "epochs": "1"}
        | {"multi_label": "1", "learning_rate": "0.01"}
    )
    write_multi_label_rec(job.data / "train" / "train.rec", train, 1)
    rec = write_multi_label_rec(job.data / "validation" / "validation.rec", validation, 2)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(job)
    assert report["confusion_matrix"] is None
    labels, probabilities = module_scores(job, rec, label_width=4)
    np.testing.assert_array_equal(labels, validation)
    truth, predicted = labels > 0.5, probabilities > 0.5
    from sklearn import metrics  # make test installs it (the demo's extra)

    aps = []
    for row in report["per_class"]:
        c = row["index"]
        positive, hit = truth[:, c], predicted[:, c]
        tp, fp = int((positive & hit).sum()), int((~positive & hit).sum())
        fn, tn = int((positive & ~hit).sum()), int((~positive & ~hit).sum())
        assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn)
        assert (row["precision"], row["recall"]) == pytest.approx((precision, recall))
        # The report ranks scores in 1000 bins, a bin's examples tied: scikit-learn's average
        # precision of the same binned scores (it counts tied scores as one threshold).
        binned = np.minimum((probabilities[:, c] * 1000).astype(int), 999)
        expected_ap = metrics.average_precision_score(truth[:, c], binned)
        assert row["average_precision"] == pytest.approx(expected_ap, abs=1e-6)
        aps.append(expected_ap)
    assert report["mean_average_precision"] == pytest.approx(np.mean(aps), abs=1e-6)
    logged = re.findall(r"Epoch\[0\] Validation-mean_average_precision=([0-9.]+)", result.stdout)
    assert float(logged[0]) == pytest.approx(np.mean(aps), abs=1e-6)
    folder = job.base / "output" / "data"
    assert_pictures(folder, ("curves.png", "per_class.png"))
    assert not (folder / "confusion_matrix.png").exists()
    assert_self_contained(folder, ("curves.png", "per_class.png"))


def test_an_early_stopped_job_writes_its_report(tmp_path) -> None:
    job = single_label_job(tmp_path, epochs="10", early_stopping="1")
    job.hyperparameters(
        {**json.loads((job.config / "hyperparameters.json").read_text())}
        | {"early_stopping_min_epochs": "1", "early_stopping_patience": "1"}
        | {"early_stopping_tolerance": "0.9"}
    )
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Early stopping after epoch" in result.stdout
    report = report_of(job)
    ran = len(VALIDATION.findall(result.stdout))
    assert ran < 10 and len(report["epochs"]) == ran
    assert np.array(report["confusion_matrix"]).sum() == len(VALIDATION_LABELS)


def test_without_validation_the_report_has_training_curves_and_says_why_no_matrix(
    tmp_path,
) -> None:
    job = Job(tmp_path / "job")
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.rec_channel("train", balanced_labels(64, 4), seed=1)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    report = report_of(job)
    assert report["confusion_matrix"] is None and report["per_class"] == []
    assert any("No validation channel" in note for note in report["notes"])
    assert report["kept_epoch"] == 1  # the last epoch, the one model/ holds
    assert [e["validation"] for e in report["epochs"]] == [None, None]
    folder = job.base / "output" / "data"
    assert sorted(p.name for p in folder.glob("*.png")) == ["curves.png"]
    assert_pictures(folder, ("curves.png",))
    assert_self_contained(folder, ("curves.png",))
    assert "No validation channel" in (folder / "report.html").read_text()


def test_a_plotting_failure_is_a_warning_and_the_job_still_succeeds(tmp_path, monkeypatch) -> None:
    """Every Python process of the job starts with matplotlib's savefig raising."""
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(
        "from matplotlib.figure import Figure\n"
        "def broken(*args, **kwargs):\n"
        "    raise RuntimeError('plotting is broken')\n"
        "Figure.savefig = broken\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{patches}:{os.environ.get('PYTHONPATH', '')}")
    job = Job(tmp_path / "job")
    job.hyperparameters({**TINY_HYPERPARAMETERS, "epochs": "1"})
    job.rec_channel("train", balanced_labels(64, 4), seed=1)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"WARNING.*training report.*plotting is broken", result.stdout + result.stderr)
    assert (job.base / "output" / "model.tar.gz").exists()
    assert list(job.model_dir.glob("*.params"))
    assert report_of(job)["epochs"][0]["epoch"] == 0  # report.json comes before the PNGs
    assert not (job.base / "output" / "data" / "report.html").exists()


class ClearRecorder:
    """A stand-in for the resumable state: records when the job clears it."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def clear(self) -> None:
        self.events.append("cleared")


def finished_model(tmp_path: Path) -> Paths:
    paths = Paths(tmp_path)
    paths.model_dir.mkdir(parents=True)
    (paths.model_dir / "image-classification-0001.params").write_bytes(os.urandom(1 << 22))
    return paths


def test_the_report_is_written_while_the_archive_is_packed(tmp_path, monkeypatch) -> None:
    """The report waits (up to 30 s) for the archive to be whole: done one after the other,
    the archive would not exist yet. The resumable state goes last."""
    monkeypatch.delenv("TRAINING_JOB_ARN", raising=False)
    paths, events = finished_model(tmp_path), []

    def report() -> None:
        deadline = time.monotonic() + 30
        while not paths.local_model_tar.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        events.append("report saw the archive" if paths.local_model_tar.exists() else "alone")

    session._finish(paths, ClearRecorder(events), True, report)
    assert events == ["report saw the archive", "cleared"]
    with tarfile.open(paths.local_model_tar, "r:gz") as tar:
        assert tar.getnames() == ["image-classification-0001.params"]


def test_a_failed_archive_fails_the_job_and_keeps_the_resumable_state(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.delenv("TRAINING_JOB_ARN", raising=False)
    paths, events = finished_model(tmp_path), []

    def no_space(model_dir: Path, tar_path: Path) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(session.archive, "pack_model", no_space)
    with pytest.raises(OSError, match="No space"):
        session._finish(paths, ClearRecorder(events), True, lambda: events.append("report"))
    assert events == ["report"]


def test_the_supervising_parent_draws_the_report_the_child_hands_over(
    tmp_path, monkeypatch
) -> None:
    """The training child (IMGCLS_SUPERVISED set) cannot import matplotlib here: the report's
    PNGs and page exist only because the parent, which can, drew them."""
    patches = tmp_path / "patches"
    patches.mkdir()
    (patches / "sitecustomize.py").write_text(
        "import os, sys\n"
        "class NoMatplotlib:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'matplotlib':\n"
        "            raise ImportError('matplotlib is blocked in the training child')\n"
        "if os.environ.get('IMGCLS_SUPERVISED'):\n"
        "    sys.meta_path.insert(0, NoMatplotlib())\n"
    )
    monkeypatch.setenv("PYTHONPATH", f"{patches}:{os.environ.get('PYTHONPATH', '')}")
    job = single_label_job(tmp_path, epochs="1")
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr
    folder = job.base / "output" / "data"
    assert_pictures(folder, REPORT_PNGS)
    assert_self_contained(folder, REPORT_PNGS)
    assert report_of(job)["epochs"][0]["epoch"] == 0


def test_without_a_listening_parent_the_job_draws_its_report_itself(tmp_path) -> None:
    history = History()
    history.restore(
        [
            {
                "epoch": 0,
                "train": {"accuracy": 0.5, "loss": 1.0},
                "learning_rate": 0.1,
                "images_per_second": 10.0,
                "seconds": 1.0,
            }
        ]
    )
    inputs = ReportInputs({}, None, 4)

    def closed_pipe(folder: Path) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    write_report_safely(tmp_path, history, tmp_path / "model", inputs, closed_pipe)
    assert_pictures(tmp_path, ("curves.png",))
    assert_self_contained(tmp_path, ("curves.png",))


def test_the_pipe_leaves_the_environment_of_the_child_that_takes_it() -> None:
    environ = {REPORT_FD_ENV: "7", "PATH": "/bin"}
    assert take_hand_over(environ) is not None
    assert environ == {"PATH": "/bin"}  # a grandchild never sees the number
    assert take_hand_over(environ) is None
    stray = {REPORT_FD_ENV: "stdout"}
    assert take_hand_over(stray) is None and stray == {}  # the job then draws its own report
