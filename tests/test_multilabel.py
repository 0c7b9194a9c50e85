"""Multi-label classification (multi_label=1): multi-hot .lst columns and im2rec.py --pack-label
records, sigmoid cross-entropy (weighted with use_weighted_loss=1), mean per-class accuracy and
mean average precision, and a model that ends in per-class sigmoid probabilities."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS
from data_support import PlatformPipe, im2rec, manifest_stream, multi_pattern_image, write_image

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.data.labels import positive_weights
from imgcls.data.preprocess import prepare
from imgcls.training.loss import loss_function
from imgcls.training.metrics import MeanAveragePrecision, MultiLabelAccuracy
from imgcls.training.session import build_learner

CLASS_RATES = (0.5, 0.3, 0.15, 0.4)
MEAN_ACCURACY = 0.9


def multi_hot_labels(count: int, seed: int) -> np.ndarray:
    """Independent classes at CLASS_RATES: an imbalanced multi-label dataset."""
    return (np.random.default_rng(seed).random((count, 4)) < CLASS_RATES).astype(int)


def rarity(labels: np.ndarray) -> np.ndarray:
    """Each class's negatives / positives, counted in the test (every class occurs here)."""
    positives = labels.sum(axis=0)
    assert (positives > 0).all() and (positives < len(labels)).all()
    return (len(labels) - positives) / positives


def multi_label_folder(root: Path, lst: Path, labels: np.ndarray, seed: int) -> None:
    """Images under root/ and a multi-hot .lst as im2rec.py writes it (a float column per class)."""
    rng = np.random.default_rng(seed)
    lines = []
    for index, row in enumerate(labels):
        path = f"img/{index}.png"
        write_image(root / path, multi_pattern_image(list(np.flatnonzero(row)), 20, rng))
        lines.append("\t".join([str(index), *(f"{v:f}" for v in row), path]))
    lst.parent.mkdir(parents=True, exist_ok=True)
    lst.write_text("\n".join(lines) + "\n")


def test_multi_label_images_and_packed_records_train_to_the_stated_mean_accuracy(
    make_job, tmp_path
) -> None:
    train_labels, validation_labels = multi_hot_labels(192, 1), multi_hot_labels(64, 2)
    job = make_job()
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": "192", "epochs": "3", "resize": "18"}
        | {"multi_label": "1", "use_weighted_loss": "1", "learning_rate": "0.05"}
    )
    image = {"ContentType": "application/x-image"}
    job.input_data_config(
        {
            "train": image,
            "train_lst": image,
            "validation": {"ContentType": "application/x-recordio"},
        }
    )
    multi_label_folder(job.data / "train", job.data / "train_lst" / "train.lst", train_labels, 1)
    multi_label_folder(tmp_path / "val", tmp_path / "val" / "val.lst", validation_labels, 2)
    im2rec("--pack-label", "--pass-through", tmp_path / "val" / "val", tmp_path / "val")
    (job.data / "validation").mkdir()
    shutil.move(tmp_path / "val" / "val.rec", job.data / "validation" / "val.rec")

    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    logged = re.search(r"positive weight per class from .*: (\[.*\])", result.stdout)
    np.testing.assert_allclose(json.loads(logged.group(1)), rarity(train_labels), rtol=1e-3)
    accuracy = [float(v) for v in re.findall(r"Validation-accuracy=([0-9.]+)", result.stdout)]
    average_precision = re.findall(
        r"\] Epoch\[\d\] Validation-mean_average_precision=", result.stdout
    )
    assert len(accuracy) == 3 and len(average_precision) == 3
    assert max(accuracy) >= MEAN_ACCURACY, accuracy
    assert_sigmoid_model(job.model_dir, validation_labels, tmp_path / "val")


def test_multi_label_manifest_stream_with_class_ids_in_pipe_mode(make_job) -> None:
    labels = multi_hot_labels(128, 3)
    job = make_job()
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": "128", "epochs": "3"}
        | {"multi_label": "1", "use_weighted_loss": "1", "learning_rate": "0.05"}
    )
    content_type = "application/x-recordio; label-format=class-id"
    job.input_data_config(
        {
            "train": {
                "ContentType": content_type,
                "RecordWrapperType": "RecordIO",
                "TrainingInputMode": "Pipe",
            }
        }
    )
    rng = np.random.default_rng(3)
    classes = [np.flatnonzero(row).tolist() for row in labels]
    images = [multi_pattern_image(ids, 16, rng) for ids in classes]
    PlatformPipe(job.data, "train", manifest_stream(images, map(json.dumps, classes)), 3).start()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    logged = re.search(r"positive weight per class from .*train_0: (\[.*\])", result.stdout)
    np.testing.assert_allclose(json.loads(logged.group(1)), rarity(labels), rtol=1e-3)
    accuracy = re.findall(r"Epoch\[2\] Train-accuracy=([0-9.]+)", result.stdout)
    assert float(accuracy[0]) >= MEAN_ACCURACY


def assert_sigmoid_model(model_dir: Path, labels: np.ndarray, images: Path) -> None:
    """The exported network, loaded as SageMaker's notebooks do, gives per-class probabilities."""
    epoch = int(next(model_dir.glob("*.params")).stem[-4:])
    sym, arg, aux = mx.model.load_checkpoint(str(model_dir / "image-classification"), epoch)
    module = mx.mod.Module(symbol=sym, label_names=None, context=mx.cpu())
    module.bind(for_training=False, data_shapes=[("data", (len(labels), 3, 16, 16))])
    module.set_params(arg, aux)
    batch = np.concatenate(
        [prepare((images / f"img/{i}.png").read_bytes(), (3, 16, 16)) for i in range(len(labels))]
    )
    module.forward(mx.io.DataBatch([mx.nd.array(batch)]), is_train=False)
    probabilities = module.get_outputs()[0].asnumpy()
    assert probabilities.shape == labels.shape
    assert ((probabilities >= 0) & (probabilities <= 1)).all()
    assert not np.allclose(probabilities.sum(axis=1), 1.0)
    assert ((probabilities > 0.5) == labels).mean() >= 0.8


def test_mean_average_precision_matches_scikit_learn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    truth = rng.random((300, 5)) < 0.3
    logits = rng.normal(size=(300, 5)) + 1.5 * truth
    metric, accuracy = MeanAveragePrecision(5), MultiLabelAccuracy()
    for start in range(0, 300, 64):
        labels, preds = (
            [mx.nd.array(truth[start : start + 64])],
            [mx.nd.array(logits[start : start + 64])],
        )
        metric.update(labels, preds)
        accuracy.update(labels, preds)
    expected = metrics.average_precision_score(truth, logits, average="macro")
    assert metric.get() == ("mean_average_precision", pytest.approx(expected, abs=0.005))
    per_class = ((logits > 0) == truth).mean(axis=0)
    assert accuracy.get() == ("accuracy", pytest.approx(per_class.mean()))


def test_mean_average_precision_of_summed_counters_equals_the_whole() -> None:
    """Hosts of a multi-host job sum counters(); the result must be the whole data's mAP."""
    rng = np.random.default_rng(1)
    truth = rng.random((200, 4)) < 0.4
    logits = rng.normal(size=(200, 4)) + truth
    whole, first, second = (MeanAveragePrecision(4) for _ in range(3))
    whole.update([mx.nd.array(truth)], [mx.nd.array(logits)])
    first.update([mx.nd.array(truth[:120])], [mx.nd.array(logits[:120])])
    second.update([mx.nd.array(truth[120:])], [mx.nd.array(logits[120:])])
    first.set_counters(first.counters() + second.counters())
    assert first.get() == whole.get()


def test_weighted_loss_weighs_each_class_positives_by_its_rarity() -> None:
    weights = positive_weights(np.array([50, 10, 0, 100]), 100)
    assert weights.tolist() == [1.0, 9.0, 1.0, 1.0]
    loss = loss_function(True, lambda: np.array([1.0, 9.0], dtype=np.float32))
    plain = loss_function(True)
    logits, labels = mx.nd.zeros((1, 2)), mx.nd.array([[1, 1]])
    per_class = np.log(2) * np.array([1.0, 9.0])
    assert loss(logits, labels).asscalar() == pytest.approx(per_class.mean(), rel=1e-5)
    assert plain(logits, labels).asscalar() == pytest.approx(np.log(2), rel=1e-5)


def test_a_weighted_multi_label_learner_trains_on_the_weighted_sigmoid_cross_entropy() -> None:
    """The learner a job builds with use_weighted_loss=1, against the formula written here:
    mean over classes of -(w y log sigmoid(z) + (1 - y) log(1 - sigmoid(z)))."""
    hp = parse_hyperparameters(
        {**TINY_HYPERPARAMETERS, "multi_label": "1", "use_weighted_loss": "1"}
    )
    weights = np.array([1.0, 9.0, 0.5, 3.0], dtype=np.float32)
    learner = build_learner(hp, [mx.cpu()], None, positive_weights=lambda: weights)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    y = (rng.random((6, 4)) < 0.4).astype(np.float32)
    p = 1 / (1 + np.exp(-z.astype(np.float64)))
    expected = -(weights * y * np.log(p) + (1 - y) * np.log(1 - p)).mean(axis=1)
    loss = learner.loss_fn(mx.nd.array(z), mx.nd.array(y)).asnumpy()
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
