"""Image channels: folders of images with the .lst files of MXNet's im2rec.py, packed into
RecordIO at start and trained end to end; and the bad-data battery, each case a ClientError in
output/failure naming the file and line."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import mxnet as mx
import numpy as np
import pytest
from conftest import TINY_HYPERPARAMETERS, pattern_image
from data_support import class_folders, im2rec_list, write_image
from serving_support import flat_png, forbid_decoding

from imgcls.cli import main
from imgcls.data.packing import pack_images

VALIDATION_ACCURACY = re.compile(r"Epoch\[\d+\] Validation-accuracy=([0-9.]+)")
PACKED = re.compile(r"Packed (\d+) images listed in (\S+) into RecordIO in .* images/s.*: (\S+)$")


def image_channels(*names: str) -> dict:
    return {name: {"ContentType": "application/x-image"} for name in names}


def test_im2rec_lists_and_folders_train_end_to_end_through_a_temporary_recordio(make_job) -> None:
    job = make_job()
    job.hyperparameters(
        {**TINY_HYPERPARAMETERS, "num_training_samples": "128", "epochs": "5", "resize": "20"}
        | {"learning_rate": "0.05"}
    )
    job.input_data_config(image_channels("train", "validation", "train_lst", "validation_lst"))
    class_folders(job.data / "train", per_class=32, seed=1)
    class_folders(job.data / "validation", per_class=16, seed=2)
    train_lst = im2rec_list(job.data / "train_lst" / "train", job.data / "train")
    validation_lst = im2rec_list(job.data / "validation_lst" / "val", job.data / "validation")
    assert "\t2.000000\tclass2/" in train_lst.read_text()
    result = job.train()
    assert result.returncode == 0, result.stdout + result.stderr
    packed = [m.groups() for line in result.stdout.splitlines() if (m := PACKED.search(line))]
    assert [(count, lst) for count, lst, _ in packed] == [
        ("128", str(train_lst)),
        ("64", str(validation_lst)),
    ]
    records = [Path(rec) for _, _, rec in packed]
    assert not any(job.base in rec.parents for rec in records)
    assert not any(rec.parent.exists() for rec in records), "the temporary folder outlived the job"
    assert not [p for p in job.data.rglob("*") if p.suffix in (".rec", ".idx")]
    assert max(float(v) for v in VALIDATION_ACCURACY.findall(result.stdout)) >= 0.9


def test_jpeg_and_png_are_packed_as_they_are_and_other_formats_reencoded(tmp_path) -> None:
    rng = np.random.default_rng(0)
    images = {name: pattern_image(i, 20, 3, rng) for i, name in enumerate(("a.png", "b.webp"))}
    for name, image in images.items():
        write_image(tmp_path / "images" / name, image)
    lst = tmp_path / "images.lst"
    lst.write_text("7\t0.000000\ta.png\n8\t1.000000\tb.webp\n")
    out = tmp_path / "packed.rec"
    stats = pack_images(tmp_path / "images", lst, out, num_classes=4, multi_label=False, channels=3)
    assert stats.count == 2 and stats.class_counts.tolist() == [1, 1, 0, 0]
    reader = mx.recordio.MXIndexedRecordIO(str(out.with_suffix(".idx")), str(out), "r")
    header, stored = mx.recordio.unpack(reader.read_idx(0))
    assert stored == (tmp_path / "images" / "a.png").read_bytes() and header.id == 7
    assert mx.recordio.unpack(reader.read_idx(1))[1].startswith(b"\x89PNG")
    native = mx.io.ImageRecordIter(path_imgrec=str(out), data_shape=(3, 20, 20), batch_size=2)
    batch = native.next()
    assert batch.label[0].asnumpy().tolist() == [0, 1]
    # The pixels the test wrote (PNG, and WebP, which OpenCV writes lossless by default), not
    # a decode of imgcls's: a channel order slipped in packing and decoding alike shows here.
    for index, image in enumerate(images.values()):
        np.testing.assert_array_equal(batch.data[0].asnumpy()[index].transpose(1, 2, 0), image)


@pytest.fixture(scope="module")
def listed_images(tmp_path_factory) -> Path:
    """A data folder with a train image channel and its im2rec.py list, made once."""
    data = tmp_path_factory.mktemp("listed")
    class_folders(data / "train", per_class=8)
    im2rec_list(data / "train_lst" / "train", data / "train")
    return data


@pytest.fixture
def image_job(make_job, listed_images):
    """A valid train image channel, for each bad-data case to break."""
    job = make_job()
    job.hyperparameters({**TINY_HYPERPARAMETERS, "resize": "20"})
    job.input_data_config(image_channels("train", "train_lst"))
    shutil.copytree(listed_images, job.data, dirs_exist_ok=True)
    job.lst = job.data / "train_lst" / "train.lst"
    return job


def dry_run_failure(job, monkeypatch) -> str:
    """scripts/train --dry-run, in this process; output/failure's text."""
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(job.base))
    assert main(["train", "--dry-run"]) == 1
    assert job.failure.startswith("ClientError:"), job.failure
    return job.failure


def append_line(lst: Path, line: str) -> int:
    """Add a line to a .lst; its 1-based number."""
    lines = [*lst.read_text().splitlines(), line]
    lst.write_text("\n".join(lines) + "\n")
    return len(lines)


def test_image_listed_but_missing(image_job, monkeypatch) -> None:
    number = append_line(image_job.lst, "99\t1.000000\tclass1/gone.jpg")
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line {number}: the image " in failure
    assert "class1/gone.jpg does not exist" in failure and "remove the line" in failure


def test_image_that_cannot_be_decoded(image_job, monkeypatch) -> None:
    (image_job.data / "train" / "class3" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    number = append_line(image_job.lst, "99\t3.000000\tclass3/broken.jpg")
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line {number}: the image " in failure
    assert "broken.jpg cannot be decoded" in failure and "Replace the file" in failure


@pytest.mark.parametrize("size", [(20000, 20000), (10000, 10000)], ids=["400MP", "100MP"])
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_too_large_is_a_client_error_naming_file_and_line(
    image_job, monkeypatch, size
) -> None:
    bomb = flat_png(*size)
    forbid_decoding(monkeypatch, bomb)
    image = image_job.data / "train" / "class2" / "huge.png"
    image.write_bytes(bomb)
    number = append_line(image_job.lst, "99\t2.000000\tclass2/huge.png")
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line {number}: the image {image} is " in failure
    assert "more than the 64,000,000 pixels imgcls decodes" in failure
    assert "remove the line from the .lst" in failure


@pytest.mark.parametrize(
    "line",
    ["99\tclass0/0.jpg", "99 0.0 class0/0.jpg", "x\t0.0\tclass0/0.jpg", "99\tcat\tclass0/0.jpg"],
    ids=["two-columns", "spaces-not-tabs", "index-not-a-number", "label-not-a-number"],
)
def test_malformed_lst_line(image_job, monkeypatch, line) -> None:
    number = append_line(image_job.lst, line)
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line {number}: " in failure
    assert "index<TAB>label(s)<TAB>relative/path" in failure


def test_label_count_not_matching_num_classes(image_job, monkeypatch) -> None:
    image_job.hyperparameters({**TINY_HYPERPARAMETERS, "resize": "20", "multi_label": "1"})
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line 1: 1 label(s), expected 4" in failure
    assert "one 0/1 column per class, num_classes=4" in failure


def test_label_outside_the_classes(image_job, monkeypatch) -> None:
    number = append_line(image_job.lst, "99\t4.000000\tclass0/0.jpg")
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst}, line {number}: label 4 is outside [0, 4)" in failure


def test_empty_lst(image_job, monkeypatch) -> None:
    image_job.lst.write_text("\n")
    failure = dry_run_failure(image_job, monkeypatch)
    assert f"{image_job.lst} is empty" in failure


def test_lst_channel_without_exactly_one_lst(image_job, monkeypatch) -> None:
    (image_job.lst.parent / "other.lst").write_text(image_job.lst.read_text())
    failure = dry_run_failure(image_job, monkeypatch)
    assert "Channel 'train_lst' must hold exactly one .lst file" in failure
