"""The endpoint-equivalent validation figure and inference_preprocessing=crop.

References: MXNet's own ImageRecordIter on the same bytes (the crop), and the served model
(load_predictor + predict, the server's code) on the same validation images (the figure).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from conftest import Job
from serving_support import Direct, export_tiny_model

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.data.augmentation import validation_augmenter_args
from imgcls.data.loaders import ChannelData
from imgcls.data.preprocess import prepare
from imgcls.data.recordio import RecordStats
from imgcls.errors import ClientError
from imgcls.model.artifact import METADATA_FILE
from imgcls.serving.predictor import load_predictor
from imgcls.training import endpoint
from imgcls.training.endpoint import EndpointCheck, endpoint_check

SHAPE = (3, 32, 32)
PERIODS = (4, 6, 9)  # squashing 48 px of width into 32 turns each period into the previous one
# The tuning regexes of the README (SageMaker SDK metric definitions) and of the built-in.
TUNING = (
    re.compile(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)"),
    re.compile(r"Validation-accuracy=([0-9.]+)"),
)
ENDPOINT = re.compile(r"Epoch\[(\d+)\] Validation-endpoint_accuracy=([0-9.]+)")


def stripes(label: int, rng: np.random.Generator, height: int = 36, width: int = 48) -> np.ndarray:
    """Vertical stripes whose period says the class, random phase and noise (RGB uint8)."""
    period = PERIODS[label]
    x = np.arange(width) + rng.uniform(0, period)
    row = np.where((x % period) < period / 2, 200, 40)
    image = np.broadcast_to(row[None, :, None], (height, width, 3)).astype(np.int16)
    image = image + rng.integers(-30, 30, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image[:, :, ::-1])[1].tobytes()


def write_images(path: Path, images: list[np.ndarray], labels: list[int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index, (image, label) in enumerate(zip(images, labels, strict=True)):
        writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, float(label), index, 0), png(image)))
    writer.close()
    return path


def stripe_channel(path: Path, count: int, seed: int) -> tuple[list[bytes], list[int]]:
    rng = np.random.default_rng(seed)
    labels = [i % len(PERIODS) for i in range(count)]
    images = [stripes(label, rng) for label in labels]
    write_images(path, images, labels)
    return [png(image) for image in images], labels


def record_iter_output(rec: Path, resize: int) -> np.ndarray:
    """What MXNet's ImageRecordIter gives validation: HxWxC float pixels, one per record."""
    native = mx.io.ImageRecordIter(
        path_imgrec=str(rec), data_shape=SHAPE, batch_size=1, **validation_augmenter_args(resize)
    )
    return np.stack([batch.data[0].asnumpy()[0] for batch in native])


@pytest.mark.parametrize(
    ("height", "width", "resize"), [(36, 48, 36), (48, 36, 40), (37, 53, 33), (200, 150, 35)]
)
def test_crop_preprocessing_is_image_record_iters_resize_and_centre_crop(
    tmp_path: Path, height: int, width: int, resize: int
) -> None:
    rng = np.random.default_rng(height)
    images = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    rec = write_images(tmp_path / "v.rec", images, [0] * 4)
    native = record_iter_output(rec, resize)
    ours = np.stack([prepare(png(image), SHAPE, shorter_side=resize)[0] for image in images])
    # Both resize with OpenCV's INTER_LINEAR: measured identical, up- and downscaling alike.
    np.testing.assert_array_equal(ours, native)
    squashed = np.stack([prepare(png(image), SHAPE)[0] for image in images])
    assert np.abs(squashed - native).mean() > 20  # the default still squashes


def test_a_model_recording_crop_is_served_with_the_crop(tmp_path: Path) -> None:
    export_tiny_model(tmp_path, image_shape=SHAPE)
    image = np.random.default_rng(3).integers(0, 256, (36, 48, 3), dtype=np.uint8)
    native = record_iter_output(write_images(tmp_path / "one.rec", [image], [0]), 36)
    squashed = cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR)
    squashed = squashed.transpose(2, 0, 1)[None].astype(np.float32)
    default = load_predictor(tmp_path)
    np.testing.assert_allclose(default.predict(png(image)), default.model.predict(squashed)[0])
    metadata = json.loads((tmp_path / METADATA_FILE).read_text())
    metadata |= {"inference_preprocessing": "crop", "inference_shorter_side": 36}
    (tmp_path / METADATA_FILE).write_text(json.dumps(metadata))
    cropped = load_predictor(tmp_path)
    served = cropped.predict(png(image))
    np.testing.assert_allclose(served, cropped.model.predict(native)[0], atol=2e-3)
    assert np.abs(served - default.predict(png(image))).max() > 1e-2


def run_stripes_job(tmp_path: Path, name: str, **extra: str) -> tuple[str, Path, list, list]:
    job = Job(tmp_path / name)
    job.hyperparameters(
        {
            "num_classes": "3",
            "num_training_samples": "288",
            "num_layers": "20",
            "image_shape": "3,32,32",
            "resize": "36",
            "mini_batch_size": "32",
            "epochs": "4",
            "learning_rate": "0.05",
            **extra,
        }
    )
    stripe_channel(job.data / "train" / "train.rec", 288, seed=1)
    images, labels = stripe_channel(job.data / "validation" / "validation.rec", 96, seed=2)
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout, job.model_dir, images, labels


def accuracy(
    predict: Callable[[bytes], np.ndarray], images: list[bytes], labels: list[int]
) -> float:
    """The accuracy `predict` gives the images."""
    predicted = [int(np.argmax(predict(image))) for image in images]
    return float(np.mean(np.array(predicted) == np.array(labels)))


def kept_epoch(model_dir: Path) -> int:
    """The 0-based epoch of the model training kept (the best validation accuracy)."""
    (params,) = model_dir.glob("image-classification-*.params")
    return int(params.stem.rsplit("-", 1)[1]) - 1


def figures(log: str, epoch: int) -> tuple[float, float]:
    validation = float(re.search(rf"Epoch\[{epoch}\] Validation-accuracy=([0-9.]+)", log)[1])
    endpoint = dict((int(e), float(v)) for e, v in ENDPOINT.findall(log))[epoch]
    return validation, endpoint


def test_logged_endpoint_figure_is_what_the_served_model_scores(tmp_path: Path) -> None:
    log, model_dir, images, labels = run_stripes_job(tmp_path, "squash")
    assert [int(e) for e, _ in ENDPOINT.findall(log)] == [0, 1, 2, 3]
    for regex in TUNING:  # the new line is not taken for Validation-accuracy
        assert len(regex.findall(log)) == 4
        assert all(not regex.search(line) for line in log.splitlines() if ENDPOINT.search(line))
    validation, endpoint = figures(log, kept_epoch(model_dir))
    # The served model's answers, as plain MXNet computes them (serving_support.Direct: the
    # server's answers are checked against it too).
    served = accuracy(Direct(model_dir), images, labels)
    assert abs(endpoint - served) <= 0.005, (endpoint, served)
    assert validation - endpoint > 0.02, (validation, endpoint)
    assert log.count("inference_preprocessing=crop") == 1  # the warning, once, names the fix


def test_crop_preprocessing_serves_what_validation_measured(tmp_path: Path) -> None:
    log, model_dir, images, labels = run_stripes_job(
        tmp_path, "crop", inference_preprocessing="crop"
    )
    validation, endpoint = figures(log, kept_epoch(model_dir))
    # The server's own crop (checked against ImageRecordIter's in the tests above).
    served = accuracy(load_predictor(model_dir).predict, images, labels)
    assert abs(endpoint - served) <= 0.005, (endpoint, served)
    assert abs(validation - served) <= 0.01, (validation, served)
    assert validation > 0.6  # it learnt: not two chance-level figures agreeing
    metadata = json.loads((model_dir / METADATA_FILE).read_text())
    assert metadata["inference_preprocessing"] == "crop"
    assert metadata["inference_shorter_side"] == 36


def channel(path: Path, size: tuple[int, int], pipe: object = None) -> ChannelData:
    rng = np.random.default_rng(0)
    write_images(path, [rng.integers(0, 256, (*size, 3), dtype=np.uint8)] * 2, [0, 1])
    return ChannelData("validation", path.parent, [path], RecordStats(files=[path]), pipe=pipe)


def test_no_endpoint_figure_when_validation_sees_what_the_endpoint_sees(tmp_path: Path) -> None:
    hp = parse_hyperparameters(
        {"num_classes": "2", "num_training_samples": "2", "image_shape": "3,32,32"}
    )
    exact = channel(tmp_path / "exact.rec", (32, 32))
    assert endpoint_check(hp, exact, None, (1, 0)) is None
    assert endpoint_check(hp, channel(tmp_path / "larger.rec", (36, 48)), None, (1, 0))
    assert (
        endpoint_check(hp, channel(tmp_path / "p.rec", (36, 48), pipe=object()), None, (1, 0))
        is None
    )
    resized = parse_hyperparameters({**hp.as_dict(), "resize": "40"})
    assert endpoint_check(resized, exact, None, (1, 0))


class MeanBrightness:
    """A stand-in learner: class 1 when the image is bright, else class 0."""

    def predict(self, data: mx.nd.NDArray) -> list[mx.nd.NDArray]:
        bright = data.astype("float32").mean(axis=(1, 2, 3)) > 127
        return [mx.nd.stack(1 - bright, bright, axis=1)]


def test_hosts_score_disjoint_parts_that_sum_to_the_whole(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = [np.full((20, 30, 3), rng.integers(0, 256), dtype=np.uint8) for _ in range(11)]
    labels = [int(rng.integers(0, 2)) for _ in images]
    rec = write_images(tmp_path / "v.rec", images, labels)
    expected = sum(
        int(image.mean() > 127) == label for image, label in zip(images, labels, strict=False)
    )

    def scored(parts: int, index: int) -> tuple[float, int]:
        check = EndpointCheck([rec], (3, 16, 16), 2, False, 4, None, parts, index)
        metric = check.metric()
        check.evaluate(MeanBrightness(), metric)
        return metric.sum_metric, metric.num_inst

    whole = scored(1, 0)
    parts = [scored(3, i) for i in range(3)]
    assert whole == (expected, 11)
    assert (sum(p[0] for p in parts), sum(p[1] for p in parts)) == whole


def test_kept_inputs_are_decoded_once_and_score_as_a_fresh_decode(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(6)
    images = [np.full((20, 30, 3), rng.integers(0, 256), dtype=np.uint8) for _ in range(9)]
    labels = [int(rng.integers(0, 2)) for _ in images]
    rec = write_images(tmp_path / "v.rec", images, labels)
    expected = sum(int(i.mean() > 127) == label for i, label in zip(images, labels, strict=True))
    reads = []
    original = endpoint.records
    monkeypatch.setattr(endpoint, "records", lambda files: reads.append(files) or original(files))
    check = EndpointCheck([rec], (3, 16, 16), 2, False, 4, keep_inputs=True)
    for _ in range(3):
        metric = check.metric()
        check.evaluate(MeanBrightness(), metric)
        assert (metric.sum_metric, metric.num_inst) == (expected, 9)
    assert len(reads) == 1


def opencv_squash(data: bytes, height: int, width: int) -> np.ndarray:
    """The contract's inference preprocessing, written out with OpenCV: C x H x W uint8."""
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)


def test_kept_inputs_are_the_squashed_pixels_as_uint8_in_record_order(tmp_path: Path) -> None:
    data, labels = stripe_channel(tmp_path / "v.rec", 9, seed=8)
    check = EndpointCheck([tmp_path / "v.rec"], SHAPE, 3, False, 4, keep_inputs=True)
    check.evaluate(MeanBrightness(), check.metric())
    assert [len(pixels) for pixels, _ in check.kept] == [4, 4, 1]
    assert all(pixels.dtype == np.uint8 for pixels, _ in check.kept)
    kept = np.concatenate([pixels for pixels, _ in check.kept])
    expected = np.stack([opencv_squash(image, *SHAPE[1:]) for image in data])
    np.testing.assert_array_equal(kept, expected)
    assert np.concatenate([rows[:, 0] for _, rows in check.kept]).tolist() == labels


def test_a_record_that_does_not_decode_fails_the_pass_with_its_place(tmp_path: Path) -> None:
    """Decoded on the pool's threads, a bad record still fails the pass with a ClientError that
    names it, as the one-at-a-time decode did."""
    rec = tmp_path / "v.rec"
    writer = mx.recordio.MXRecordIO(str(rec), "w")
    for index in range(6):
        image = b"not an image" if index == 2 else png(np.zeros((20, 30, 3), np.uint8))
        writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, index, 0), image))
    writer.close()
    check = EndpointCheck([rec], (3, 16, 16), 2, False, 4)
    with pytest.raises(ClientError, match=r"validation record 2 \(id 2\).*JPEG or PNG"):
        check.evaluate(MeanBrightness(), check.metric())


def test_the_memory_bound_counts_the_kept_inputs_as_uint8(tmp_path: Path, monkeypatch) -> None:
    rec = write_images(tmp_path / "v.rec", [np.zeros((20, 30, 3), np.uint8)] * 3, [0, 1, 0])
    hp = parse_hyperparameters(
        {"num_classes": "2", "num_training_samples": "3", "image_shape": "3,16,16"}
    )
    stats = RecordStats(files=[rec], count=3)
    data = ChannelData("validation", tmp_path, [rec], stats)
    uint8_bytes = 3 * 3 * 16 * 16
    for memory, kept in ((4 * uint8_bytes, True), (4 * uint8_bytes - 1, False)):
        monkeypatch.setattr(endpoint, "total_memory", lambda memory=memory: memory)
        assert endpoint_check(hp, data, None, (1, 0)).keep_inputs is kept


def test_the_endpoint_check_keeps_a_small_channels_inputs(tmp_path: Path) -> None:
    rec = write_images(tmp_path / "v.rec", [np.zeros((20, 30, 3), np.uint8)] * 3, [0, 1, 0])
    hp = parse_hyperparameters(
        {"num_classes": "2", "num_training_samples": "3", "image_shape": "3,16,16"}
    )
    stats = RecordStats(files=[rec], count=3)
    check = endpoint_check(hp, ChannelData("validation", tmp_path, [rec], stats), None, (1, 0))
    assert check is not None and check.keep_inputs
