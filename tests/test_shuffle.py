"""Shuffling: ImageRecordIter over an index permutes the whole channel every pass, whatever the
order the records were written in; the index is MXNet's own format; nothing is written into
the input folders; Pipe mode's bounded buffer moves examples only so far."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import mxnet as mx
import numpy as np
from conftest import TINY_HYPERPARAMETERS, Job, balanced_labels, pattern_image, write_rec
from shuffle_support import write_ordered_rec
from test_sharding import channel, check_passes, hyperparameters

from imgcls.data.loaders import load_channel, train_iter
from imgcls.data.pipe.batches import _shuffled
from imgcls.data.recordio import record_index, scan_records

FINAL_ACCURACY = re.compile(r"Validation-accuracy=([0-9.]+)")
# 100 KB a record: 400 records span several of the chunks ImageRecordIter reads at a time
# without an index (and shuffles within).
PAD_BYTES = 100_000


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under `folder` with the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def streamed_labels(folder: Path, epochs: int, batch_size: int = 32, num_classes: int = 400):
    """The labels train_iter yields over `epochs` for the File-mode channel in `folder`."""
    hp = hyperparameters(num_classes)
    data = load_channel(channel(folder, "FullyReplicated"), hp, folder.parent)
    batches = train_iter(data, hp, batch_size)
    epochs_seen = []
    for _ in range(epochs):
        batches.reset()
        epochs_seen.append([b.label[0].asnumpy().astype(int).tolist() for b in batches])
    return epochs_seen


def test_one_pass_over_a_label_sorted_file_is_a_permutation_of_the_whole_file(tmp_path) -> None:
    folder = tmp_path / "train"
    write_ordered_rec(folder / "train.rec", list(range(400)), list(range(400)), PAD_BYTES)
    epochs = streamed_labels(folder, 2)
    first_batch = epochs[0][0]
    # Labels are record positions: the first batch draws from every quarter of the file.
    assert {label // 100 for label in first_batch} == {0, 1, 2, 3}, first_batch
    check_passes([x for epoch in epochs for batch in epoch for x in batch], list(range(400)))


def test_several_files_of_a_channel_are_shuffled_together(tmp_path) -> None:
    folder = tmp_path / "train"
    write_ordered_rec(folder / "a.rec", list(range(200)), list(range(200)), PAD_BYTES)
    write_ordered_rec(folder / "b.rec", list(range(200, 400)), list(range(200)), PAD_BYTES)
    epochs = streamed_labels(folder, 2)
    first_batch = epochs[0][0]
    assert {label // 100 for label in first_batch} == {0, 1, 2, 3}, first_batch
    check_passes([x for epoch in epochs for batch in epoch for x in batch], list(range(400)))


def test_the_index_built_from_the_scan_is_the_one_mxnet_writes(tmp_path) -> None:
    source = tmp_path / "mxnet"
    source.mkdir()
    writer = mx.recordio.MXIndexedRecordIO(str(source / "d.idx"), str(source / "d.rec"), "w")
    rng = np.random.default_rng(0)
    for key in range(50):
        image = pattern_image(key % 4, 8 + 2 * (key % 5), 3, rng)  # varied record lengths
        writer.write_idx(key, mx.recordio.pack_img(mx.recordio.IRHeader(0, key % 4, key, 0), image))
    writer.close()
    channel_folder = tmp_path / "channel"
    channel_folder.mkdir()
    shutil.copy(source / "d.rec", channel_folder / "d.rec")
    built = record_index(scan_records([channel_folder / "d.rec"], num_classes=4), tmp_path / "x")
    assert built == tmp_path / "x"
    assert built.read_text() == (source / "d.idx").read_text()
    assert sorted(p.name for p in channel_folder.iterdir()) == ["d.rec"]


def test_a_matching_idx_is_used_and_a_stale_one_is_not(tmp_path) -> None:
    folder = tmp_path / "train"
    write_rec(folder / "train.rec", list(range(40)), seed=1)
    stats = scan_records([folder / "train.rec"], num_classes=40)
    good = record_index(stats, tmp_path / "first.idx")
    shutil.copy(good, folder / "train.idx")
    assert record_index(stats, tmp_path / "second.idx") == folder / "train.idx"
    # An .idx of other records (here: the first 30 of a different file) is not trusted.
    write_rec(tmp_path / "other.rec", list(range(30)), size=24, seed=2)
    stale = record_index(scan_records([tmp_path / "other.rec"], num_classes=40), tmp_path / "o")
    shutil.copy(stale, folder / "train.idx")
    before = folder_state(folder)
    assert record_index(stats, tmp_path / "third.idx") == tmp_path / "third.idx"
    epochs = streamed_labels(folder, 1, batch_size=8, num_classes=40)
    check_passes([x for batch in epochs[0] for x in batch], list(range(40)))
    assert folder_state(folder) == before


def test_a_label_sorted_channel_trains_as_well_as_a_shuffled_one(tmp_path) -> None:
    """The same 400 records (100 a class), in label order and shuffled; the channel folders
    are as they were after the job."""
    labels = [i // 100 for i in range(400)]
    orders = {"sorted": list(range(400)), "shuffled": np.random.default_rng(1).permutation(400)}
    accuracy = {}
    for name, order in orders.items():
        job = Job(tmp_path / name)
        job.hyperparameters({**TINY_HYPERPARAMETERS, "num_training_samples": "400"})
        write_ordered_rec(job.data / "train" / "train.rec", labels, list(order), PAD_BYTES)
        write_rec(job.data / "validation" / "validation.rec", balanced_labels(200, 4), seed=2)
        before = folder_state(job.data)
        result = job.train()
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert folder_state(job.data) == before
        accuracy[name] = float(FINAL_ACCURACY.findall(result.stdout)[-1])
    assert accuracy["shuffled"] >= 0.9, accuracy  # the task is learnt (chance is 0.25)
    assert accuracy["sorted"] >= accuracy["shuffled"] - 0.02, accuracy


def test_the_pipe_shuffle_buffer_moves_an_example_at_most_its_size_early() -> None:
    capacity, count = 64, 2000
    out = list(_shuffled(iter(range(count)), capacity, np.random.default_rng(0)))
    assert sorted(out) == list(range(count))
    moves = np.arange(count) - np.argsort(out)  # how many places early each example came out
    assert moves.max() <= capacity
    assert np.mean(np.abs(moves)) < capacity  # and, on average, within about that of its place
