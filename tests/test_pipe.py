"""Pipe mode: RecordIO and augmented-manifest streams from one FIFO per epoch, as the platform
feeds them, trained end to end by scripts/train."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS, balanced_labels, pattern_image, write_rec
from data_support import PlatformPipe, manifest_stream, recordio_bytes
from numpy.lib.stride_tricks import sliding_window_view

from imgcls.data.augmentation import COLOR, train_augmenter_args, validation_augmenter_args
from imgcls.data.labels import text_label_row
from imgcls.data.pipe.batches import PREFETCH_BATCHES, SHUFFLE_BUFFER, PipeBatches
from imgcls.data.pipe.examples import recordio_examples
from imgcls.data.pipe.fifo import PipeSource, read_records, wait_for_pipe
from imgcls.data.pipe.image_aug_default import augment_image
from imgcls.errors import ClientError

VALIDATION_ACCURACY = re.compile(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)")
PIPE = {"TrainingInputMode": "Pipe"}


def rec_stream(tmp_path, labels, seed) -> bytes:
    return write_rec(tmp_path / f"stream-{seed}.rec", labels, seed=seed).read_bytes()


def test_recordio_pipe_trains_one_fifo_per_epoch_even_when_one_appears_late(
    make_job, tmp_path
) -> None:
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "num_training_samples": "128", "epochs": "4"})
    rec = {"ContentType": "application/x-recordio", **PIPE}
    job.input_data_config({"train": rec, "validation": rec})
    train = PlatformPipe(
        job.data, "train", rec_stream(tmp_path, balanced_labels(128, 4), 1), 4, {2: 3.0}
    )
    validation = PlatformPipe(
        job.data, "validation", rec_stream(tmp_path, balanced_labels(64, 4), 2), 4
    )
    train.start()
    validation.start()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert train.served == 4 and validation.served == 4
    assert "'train' is shuffled within a buffer of 512 examples only" in result.stdout
    for epoch in range(4):
        assert f"train_{epoch}: 128 examples" in result.stdout
        assert f"validation_{epoch}: 64 examples" in result.stdout
    assert max(float(v) for v in VALIDATION_ACCURACY.findall(result.stdout)) >= 0.9


def test_augmented_manifest_stream_with_numeric_labels(make_job) -> None:
    job = make_job()
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": "100", "epochs": "2", "resize": "18"}
    )
    manifest = {"ContentType": "application/x-image", "RecordWrapperType": "RecordIO", **PIPE}
    job.input_data_config({"train": manifest})
    rng = np.random.default_rng(3)
    labels = balanced_labels(100, 4)
    images = [pattern_image(label, 20, 3, rng) for label in labels]
    texts = [str(label) if i % 2 else f"{label}.0" for i, label in enumerate(labels)]
    PlatformPipe(job.data, "train", manifest_stream(images, texts), 2).start()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "train_1: 100 examples" in result.stdout
    assert "pipe delivered" not in result.stdout
    accuracy = re.findall(r"Epoch\[1\] Train-accuracy=([0-9.]+)", result.stdout)
    assert float(accuracy[0]) >= 0.6


def test_a_pipe_that_delivers_no_record_is_a_client_error(make_job) -> None:
    job = make_job()
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.input_data_config({"train": {"ContentType": "application/x-recordio", **PIPE}})
    PlatformPipe(job.data, "train", b"", 1).start()
    result = job.train()
    assert result.returncode == 1
    assert job.failure.startswith("ClientError:"), job.failure
    assert f"{job.data / 'train_0'} delivered no record" in job.failure


def test_manifest_streamed_without_recordio_wrapping_names_the_setting_to_change(
    make_job,
) -> None:
    job = make_job()
    job.hyperparameters(TINY_HYPERPARAMETERS)
    job.input_data_config({"train": {"ContentType": "application/x-recordio", **PIPE}})
    image = cv2.imencode(".jpg", pattern_image(0, 16, 3, np.random.default_rng(0)))[1].tobytes()
    PlatformPipe(job.data, "train", image + b"0", 1).start()
    result = job.train()
    assert result.returncode == 1
    assert job.failure.startswith("ClientError:"), job.failure
    assert f"{job.data / 'train_0'}, record 0 (byte 0)" in job.failure
    assert "RecordWrapperType to RecordIO on channel 'train'" in job.failure


def test_image_content_type_in_pipe_mode_needs_recordio_wrapping(make_job) -> None:
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "resize": "20"})
    job.input_data_config({"train": {"ContentType": "application/x-image", **PIPE}})
    result = job.train("--dry-run")
    assert result.returncode == 1
    assert "set RecordWrapperType to RecordIO on channel 'train'" in job.failure


def test_a_fifo_that_never_appears_is_a_client_error_after_the_wait(tmp_path) -> None:
    with pytest.raises(ClientError, match=r"train_5 did not appear within 0.2 s"):
        wait_for_pipe(tmp_path / "train_5", 0.2, "train")
    late = tmp_path / "train_1"
    threading.Timer(0.3, late.touch).start()
    wait_for_pipe(late, 5.0, "train")


def test_streaming_reads_a_bounded_number_of_examples_ahead(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = [pattern_image(i, 16, 3, rng)[:, :, ::-1] for i in range(4)]
    header = mx.recordio.IRHeader
    records = [mx.recordio.pack_img(header(0, i % 4, i, 0), images[i % 4]) for i in range(2001)]
    stream = tmp_path / "train_0"
    stream.write_bytes(recordio_bytes(records))
    pulled = []

    def counted(records):
        for example in recordio_examples(records, num_classes=4, multi_label=False):
            pulled.append(example)
            yield example

    source = PipeSource(
        "train", lambda epoch: stream, counted, "", "", num_classes=4, multi_label=False
    )
    batches = PipeBatches(source, batch_size=16, image_shape=(3, 16, 16), augment={}, shuffle=True)
    batches.reset()
    first = batches.next()
    time.sleep(0.5)
    assert len(pulled) <= SHUFFLE_BUFFER + (PREFETCH_BATCHES + 2) * 16
    assert len(set(first.label[0].asnumpy().tolist())) > 1
    rest = list(batches)
    assert len(rest) == 125 and rest[-1].pad == 15 and len(pulled) == 2001


def test_records_split_by_the_writer_are_joined_as_mxnet_reads_them() -> None:
    magic = (0xCED7230A).to_bytes(4, "little")
    records = [b"plain", b"a" + magic + b"bc" + magic, magic + b"x" * 7, b""]
    stream = recordio_bytes(records)
    read = [payload for _, payload in read_records(io.BytesIO(stream), "s", hint="")]
    assert read == records
    with pytest.raises(ClientError, match=r"s, record 0 \(byte 0\): does not start"):
        list(read_records(io.BytesIO(b"\xff\xd8\xff\xe0" + stream), "s", hint=""))
    with pytest.raises(ClientError, match="ends inside the record"):
        list(read_records(io.BytesIO(stream[:-10]), "s", hint=""))


@pytest.mark.parametrize(
    ("text", "multi_label", "label_format", "expected"),
    [
        (b"3", False, "multi-hot", [3]),
        (b"2.0", False, "multi-hot", [2]),
        (b'"1"', False, "multi-hot", [1]),
        (b"[1, 0, 1, 0]", True, "multi-hot", [1, 0, 1, 0]),
        (b"[0, 2]", True, "class-id", [1, 0, 1, 0]),
        (b"3", True, "multi-hot", [0, 0, 0, 1]),
        (b"[0, 0, 1, 0]", False, "multi-hot", [2]),
    ],
)
def test_manifest_labels(text, multi_label, label_format, expected) -> None:
    row = text_label_row(text, "s, record 1", 4, multi_label, label_format)
    assert row.tolist() == expected


@pytest.mark.parametrize(
    ("text", "multi_label", "label_format", "message"),
    [
        (b"cat", False, "multi-hot", "not a number or a list of numbers"),
        (b"7", False, "multi-hot", "label 7 is outside [0, 4)"),
        (b"[1, 0]", True, "multi-hot", "2 label(s), expected 4"),
        (b"[0, 2]", False, "class-id", "names 2 classes"),
    ],
)
def test_bad_manifest_labels_name_the_record(text, multi_label, label_format, message) -> None:
    with pytest.raises(ClientError) as error:
        text_label_row(text, "train_0, record 7", 4, multi_label, label_format)
    assert str(error.value).startswith("train_0, record 7") and message in str(error.value)


def test_streamed_images_are_cropped_as_image_record_iter_crops_them(tmp_path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    rec = tmp_path / "one.rec"
    writer = mx.recordio.MXRecordIO(str(rec), "w")
    writer.write(
        mx.recordio.pack_img(mx.recordio.IRHeader(0, 0, 0, 0), image[:, :, ::-1], img_fmt=".png")
    )
    writer.close()
    native = mx.io.ImageRecordIter(
        path_imgrec=str(rec), data_shape=(3, 16, 16), batch_size=1, **validation_augmenter_args(20)
    )
    expected = native.next().data[0].asnumpy()[0].transpose(1, 2, 0)
    ours = augment_image(image, validation_augmenter_args(20), (16, 16), rng, "x")
    assert np.abs(ours.astype(int) - expected).max() <= 1
    augmented = augment_image(
        image, train_augmenter_args("crop_color_transform", 20), (16, 16), rng, "x"
    )
    assert augmented.shape == (16, 16, 3) and augmented.dtype == np.uint8
    with pytest.raises(ClientError, match="x: image is 30x40 .* smaller than image_shape's 32x32"):
        augment_image(image, {}, (32, 32), rng, "x")


def repeated_record(image: np.ndarray, count: int, path: Path) -> Path:
    """A RecordIO file holding `count` copies of one RGB image (PNG)."""
    writer = mx.recordio.MXRecordIO(str(path), "w")
    for index in range(count):
        header = mx.recordio.IRHeader(0, 0, index, 0)
        writer.write(mx.recordio.pack_img(header, image[:, :, ::-1], img_fmt=".png"))
    writer.close()
    return path


def record_iter_augmented(path: Path, count: int, **augmenter) -> np.ndarray:
    """MXNet's own augmentation of every record: count x 16 x 16 x 3 uint8 (RGB)."""
    reader = mx.io.ImageRecordIter(
        path_imgrec=str(path), data_shape=(3, 16, 16), batch_size=count, **augmenter
    )
    return reader.next().data[0].asnumpy().transpose(0, 2, 3, 1).astype(np.uint8)


def window_of(windows: np.ndarray, image: np.ndarray) -> tuple[int, int, bool] | None:
    """(top, left, mirrored) of the window that `image` is, or None."""
    for mirrored in (False, True):
        hits = np.argwhere((windows == (image[:, ::-1] if mirrored else image)).all(axis=(2, 3, 4)))
        if len(hits):
            return int(hits[0][0]), int(hits[0][1]), mirrored
    return None


def test_streamed_random_crops_and_mirrors_are_windows_as_image_record_iters_are(tmp_path) -> None:
    """Pipe mode's crop and mirror, beside MXNet's on the same image: every output of either is
    a 16x16 window of it, or its mirror, and both reach every edge and both mirror states."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    crop = {"rand_crop": True, "rand_mirror": True}
    native = record_iter_augmented(repeated_record(image, 300, tmp_path / "i.rec"), 300, **crop)
    ours = [augment_image(image, crop, (16, 16), rng, "x") for _ in range(300)]
    windows = sliding_window_view(image, (16, 16, 3))[:, :, 0]
    for outputs in (native, ours):
        places = [window_of(windows, output) for output in outputs]
        assert None not in places
        tops, lefts, mirrored = zip(*places, strict=True)
        assert (min(tops), max(tops), min(lefts), max(lefts)) == (0, 14, 0, 24)
        assert 100 < sum(mirrored) < 200


@pytest.mark.parametrize(("key", "channel"), [("random_h", 0), ("random_l", 1), ("random_s", 2)])
def test_streamed_colour_offsets_are_ones_image_record_iter_draws(tmp_path, key, channel) -> None:
    """Each output, Pipe mode's or MXNet's, is the image with one offset added to one HLS
    channel (clipped as OpenCV's HLS range is), the offset within the table's bound."""
    bound = COLOR[key]
    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    hls = cv2.cvtColor(image, cv2.COLOR_RGB2HLS).astype(np.int16)
    family = {}
    for offset in range(-bound, bound + 1):
        moved = hls.copy()
        moved[:, :, channel] += offset
        clipped = np.clip(moved, 0, [180, 255, 255]).astype(np.uint8)
        family[offset] = cv2.cvtColor(clipped, cv2.COLOR_HLS2RGB)
    native = record_iter_augmented(
        repeated_record(image, 200, tmp_path / "c.rec"), 200, **{key: bound}
    )
    ours = [augment_image(image, {key: bound}, (16, 16), rng, "x") for _ in range(200)]
    for outputs in (native, ours):
        offsets = [
            next((o for o, f in family.items() if np.array_equal(f, output)), None)
            for output in outputs
        ]
        assert None not in offsets
        assert min(offsets) < -0.8 * bound and max(offsets) > 0.8 * bound, offsets
