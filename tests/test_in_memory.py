"""Decode once (data/in_memory.py) against MXNet's ImageRecordIter and OpenCV on the same
records, and uint8 batches cast after the split to each device."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS
from test_sharding import channel

from imgcls.config.hyperparameters import parse_hyperparameters
from imgcls.data import in_memory
from imgcls.data.in_memory import InMemoryBatches, fits_in_memory
from imgcls.data.loaders import load_channel, train_iter
from imgcls.model.networks import build_network
from imgcls.training.loop import Learner, train_step

COUNT, BATCH, STORED, SIDE = 40, 8, (20, 23), 16


def write_sized_rec(path: Path, sizes: list[tuple[int, int]]) -> Path:
    """Record i: a random JPEG of sizes[i] (height, width) with label i (its identity)."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = mx.recordio.MXIndexedRecordIO(str(path.with_suffix(".idx")), str(path), "w")
    for index, (height, width) in enumerate(sizes):
        image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        header = mx.recordio.IRHeader(0, float(index), index, 0)
        writer.write_idx(index, mx.recordio.pack_img(header, image, quality=95, img_fmt=".jpg"))
    writer.close()
    return path


def opencv_decodes(path: Path) -> dict[int, np.ndarray]:
    """Each record's image decoded by OpenCV (RGB, C x H x W), by label."""
    reader = mx.recordio.MXRecordIO(str(path), "r")
    images = {}
    while (raw := reader.read()) is not None:
        header, data = mx.recordio.unpack(raw)
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        images[int(header.label)] = bgr[:, :, ::-1].transpose(2, 0, 1)
    reader.close()
    return images


def hyperparameters(augmentation: str | None):
    values = {
        **TINY_HYPERPARAMETERS,
        "num_classes": str(COUNT),
        "num_training_samples": str(COUNT),
        "mini_batch_size": str(BATCH),
        "image_shape": f"3,{SIDE},{SIDE}",
    }
    if augmentation:
        values["augmentation_type"] = augmentation
    return parse_hyperparameters(values)


def channel_batches(tmp_path: Path, augmentation: str | None, sizes=None) -> mx.io.DataIter:
    folder = tmp_path / "train"
    write_sized_rec(folder / "train.rec", sizes or [STORED] * COUNT)
    hp = hyperparameters(augmentation)
    return train_iter(load_channel(channel(folder, "FullyReplicated"), hp, tmp_path), hp, BATCH)


def epoch(batches: mx.io.DataIter) -> list[tuple[int, np.ndarray]]:
    batches.reset()
    return [
        (int(label), image)
        for batch in batches
        for label, image in zip(batch.label[0].asnumpy(), batch.data[0].asnumpy(), strict=True)
    ]


def test_without_augmentation_batches_are_image_record_iters_centre_crops(tmp_path) -> None:
    batches = channel_batches(tmp_path, None)
    assert isinstance(batches, InMemoryBatches)
    path = tmp_path / "train" / "train.rec"
    reference = mx.io.ImageRecordIter(
        path_imgrec=str(path), data_shape=(3, SIDE, SIDE), batch_size=COUNT
    )
    batch = next(iter(reference))
    labels = batch.label[0].asnumpy().astype(int)
    expected = dict(zip(labels, batch.data[0].asnumpy(), strict=True))
    seen = epoch(batches)
    assert sorted(label for label, _ in seen) == list(range(COUNT))
    for label, image in seen:
        assert image.dtype == np.uint8
        np.testing.assert_array_equal(image, expected[label])


def test_crop_gives_every_record_once_a_pass_as_a_window_of_its_decode(tmp_path) -> None:
    batches = channel_batches(tmp_path, "crop")
    assert isinstance(batches, InMemoryBatches)
    decoded = opencv_decodes(tmp_path / "train" / "train.rec")
    windows = set()
    for _ in range(3):
        seen = epoch(batches)
        assert sorted(label for label, _ in seen) == list(range(COUNT))
        for label, image in seen:
            windows.add(find_window(decoded[label], image))
    offsets = {(top, left) for top, left, _ in windows}
    assert {mirrored for _, _, mirrored in windows} == {False, True}
    assert {top for top, _ in offsets} == set(range(STORED[0] - SIDE + 1))
    assert {left for _, left in offsets} == set(range(STORED[1] - SIDE + 1))


def find_window(source: np.ndarray, image: np.ndarray) -> tuple[int, int, bool]:
    """(top, left, mirrored) of the SIDE x SIDE window of `source` that `image` is."""
    for top in range(source.shape[1] - SIDE + 1):
        for left in range(source.shape[2] - SIDE + 1):
            window = source[:, top : top + SIDE, left : left + SIDE]
            for mirrored in (False, True):
                if np.array_equal(window[:, :, ::-1] if mirrored else window, image):
                    return top, left, mirrored
    raise AssertionError("the image is no window of its record's decode")


def test_the_decode_runs_while_the_caller_goes_on_and_the_first_batch_waits_for_it(
    tmp_path, monkeypatch
) -> None:
    # The decode may not finish before train_iter returns: it waits for the test's go-ahead,
    # given only once train_iter has returned. A synchronous decode would time out here.
    go_ahead, decode_threads = threading.Event(), []
    real_decode = in_memory.decode_records

    def gated_decode(*args, **kwargs):
        decode_threads.append(threading.current_thread())
        if not go_ahead.wait(timeout=20):
            raise TimeoutError("train_iter waited for the decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr(in_memory, "decode_records", gated_decode)
    batches = channel_batches(tmp_path, None)
    go_ahead.set()
    seen = epoch(batches)
    assert decode_threads and decode_threads[0] is not threading.main_thread()
    assert sorted(label for label, _ in seen) == list(range(COUNT))


def test_a_failed_decode_fails_the_first_batch_with_its_own_error(tmp_path, monkeypatch) -> None:
    def failing_decode(*args, **kwargs):
        raise ValueError("record 7 is not an image")

    monkeypatch.setattr(in_memory, "decode_records", failing_decode)
    batches = channel_batches(tmp_path, None)
    with pytest.raises(ValueError, match="record 7 is not an image"):
        epoch(batches)


def test_records_of_several_sizes_stream_through_image_record_iter_as_uint8(tmp_path) -> None:
    sizes = [STORED if i % 2 else (STORED[0] + 3, STORED[1]) for i in range(COUNT)]
    batches = channel_batches(tmp_path, "crop", sizes)
    assert isinstance(batches, mx.io.ResizeIter)
    seen = epoch(batches)
    assert {image.dtype for _, image in seen} == {np.dtype(np.uint8)}
    assert sorted(label for label, _ in seen) == list(range(COUNT))


def test_the_memory_bound_is_a_quarter_of_the_ram() -> None:
    shape = (3, 32, 32)
    assert fits_in_memory(1000, shape, 4 * 1000 * 3 * 32 * 32)
    assert not fits_in_memory(1001, shape, 4 * 1000 * 3 * 32 * 32)


def learner(contexts: list[mx.Context]) -> Learner:
    """A ResNet-20 learner on `contexts` (its weights drawn at its first forward pass)."""
    net = build_network(20, 4, (3, SIDE, SIDE))
    net.initialize(mx.init.Xavier(), ctx=contexts)
    net.hybridize(static_alloc=True, static_shape=True)
    trainer = mx.gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1})
    return Learner(net, trainer, mx.gluon.loss.SoftmaxCrossEntropyLoss(), contexts)


def test_uint8_batches_are_cast_on_each_device_and_train_as_float32_does() -> None:
    contexts = [mx.cpu(0), mx.cpu(1)]
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (BATCH, 3, SIDE, SIDE), dtype=np.uint8)
    label = mx.nd.array(rng.integers(0, 4, BATCH))
    learners = {}
    for dtype in (np.uint8, np.float32):
        mx.random.seed(3)  # the same initial weights
        learners[dtype] = learner(contexts)
        train_step(learners[dtype], mx.nd.array(pixels, dtype=dtype), label)
    as_uint8, as_float = learners[np.uint8], learners[np.float32]
    slices = as_uint8.split(mx.nd.array(pixels, dtype=np.uint8))
    assert [(s.dtype, s.context) for s in slices] == [(np.uint8, c) for c in contexts]
    pairs = zip(
        as_uint8.net.collect_params().values(), as_float.net.collect_params().values(), strict=True
    )
    trained = [(p, e) for p, e in pairs if p.grad_req != "null"]  # the update's parameters
    assert trained
    for param, expected in trained:
        for context in contexts:
            np.testing.assert_array_equal(
                param.data(context).asnumpy(), expected.data(context).asnumpy()
            )


def test_skipped_epochs_leave_the_next_epoch_as_a_straight_run_gives_it(tmp_path) -> None:
    """A resumed job skips its finished epochs: the epoch after is the straight run's third."""
    straight = channel_batches(tmp_path / "a", "crop")
    third = [epoch(straight) for _ in range(3)][-1]
    resumed = channel_batches(tmp_path / "b", "crop")
    resumed.skip_epochs(2)
    again = epoch(resumed)
    assert [label for label, _ in again] == [label for label, _ in third]
    for (_, image), (_, expected) in zip(again, third, strict=True):
        np.testing.assert_array_equal(image, expected)
    assert [label for label, _ in epoch(channel_batches(tmp_path / "c", "crop"))] != [
        label for label, _ in third
    ]
