"""`imgcls prepare`: class folders of real JPEG/PNG files → a job whose records MXNet's own readers
give back with the label of each file's folder and im2rec.py's index, ready for `scripts/train`."""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import cv2
import mxnet as mx
import numpy as np
import pytest
from conftest import pattern_image, run_script
from data_support import im2rec, im2rec_list
from PIL import Image

from imgcls.cli import main
from imgcls.data.job_folder import prepare_job
from imgcls.errors import ClientError

CLASSES = ("zebra", "ant", "moth")  # created in this order; labels follow the sorted names
PER_CLASS = 15


def write_classes(root: Path, per_class: int = PER_CLASS, side: int = 224, seed: int = 0) -> None:
    """Pillow-written JPEGs and PNGs of several sizes, one folder per class, plus a stray text
    file (not an image: ignored, as by im2rec.py)."""
    rng = np.random.default_rng(seed)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(per_class):
            image = Image.fromarray(pattern_image(label, side + index % 3 * 8, 3, rng))
            image_format = "PNG" if index % 2 else "JPEG"
            suffix = ".png" if index % 2 else ".jpg"
            image.save(folder / f"{index:02d}{suffix}", format=image_format)
    (root / "ant" / "notes.txt").write_text("not an image")


def records(rec: Path) -> dict[int, tuple[float, bytes]]:
    """{record id: (label, image bytes)} read with MXNet's MXIndexedRecordIO through the .idx."""
    reader = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "r")
    try:
        found = {}
        for key in reader.keys:
            header, image = mx.recordio.unpack(reader.read_idx(key))
            assert header.id == key
            found[int(header.id)] = (float(header.label), image)
        return found
    finally:
        reader.close()


def lst_rows(lst: Path) -> dict[int, tuple[float, str]]:
    rows = (line.split("\t") for line in lst.read_text().splitlines())
    return {int(index): (float(label), path) for index, label, path in rows}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(images folder, job folder, im2rec.py's listing of the folder) with one broken JPEG."""
    root = tmp_path_factory.mktemp("prepare")
    images, base = root / "images", root / "job"
    write_classes(images)
    (images / "moth" / "99.jpg").write_bytes(b"\xff\xd8\xff truncated")
    assert main(["prepare", str(images), str(base), "--seed", "3"]) == 0
    listing = lst_rows(im2rec_list(root / "reference" / "all", images))
    return images, base, listing


def test_every_record_holds_its_file_and_its_folders_label(prepared) -> None:
    images, base, listing = prepared
    train = records(base / "input/data/train/train.rec")
    validation = records(base / "input/data/validation/validation.rec")
    assert not train.keys() & validation.keys()
    packed = {**train, **validation}
    broken = next(i for i, (_, path) in listing.items() if path == "moth/99.jpg")
    assert set(packed) == set(listing) - {broken}
    for index, (label, data) in packed.items():
        im2rec_label, path = listing[index]
        assert label == im2rec_label == sorted(CLASSES).index(Path(path).parts[0]), path
        assert data == (images / path).read_bytes(), path  # JPEG and PNG pass through


def test_mxnets_image_record_iter_reads_the_labels(prepared) -> None:
    _, base, listing = prepared
    rec = base / "input/data/train/train.rec"
    expected = [label for label, _ in records(rec).values()]  # the order of the .idx = file
    batches = mx.io.ImageRecordIter(
        path_imgrec=str(rec),
        path_imgidx=str(rec.with_suffix(".idx")),
        data_shape=(3, 224, 224),
        batch_size=1,
        shuffle=False,
    )
    labels = [float(batch.label[0].asnumpy()[0]) for batch in batches]
    assert labels == expected
    assert labels != sorted(labels), "the training records must be shuffled"


def test_the_split_is_stratified_and_the_config_counts_it(prepared) -> None:
    _, base, _ = prepared
    train = Counter(label for label, _ in records(base / "input/data/train/train.rec").values())
    val = Counter(
        label for label, _ in records(base / "input/data/validation/validation.rec").values()
    )
    moth = sorted(CLASSES).index("moth")  # 15 good files + 1 broken one, listed and skipped
    listed = {label: PER_CLASS + (label == moth) for label in range(3)}
    for label, count in listed.items():
        assert val[label] == round(count * 0.1)
        assert train[label] + val[label] == count - (label == moth)
    config = base / "input" / "config"
    hyperparameters = json.loads((config / "hyperparameters.json").read_text())
    assert hyperparameters == {"num_classes": "3", "num_training_samples": str(train.total())}
    channels = json.loads((config / "inputdataconfig.json").read_text())
    assert {c["ContentType"] for c in channels.values()} == {"application/x-recordio"}
    assert sorted(channels) == ["train", "validation"]
    classes = json.loads((base / "input/data/train/classes.json").read_text())
    assert classes == sorted(CLASSES)


def test_the_training_dry_run_accepts_the_job(prepared) -> None:
    _, base, _ = prepared
    result = run_script("train", base, "--dry-run", timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_resize_matches_im2rec(tmp_path: Path) -> None:
    """--resize 16 packs what `im2rec.py --resize 16` packs (shorter side, JPEG quality 95)."""
    images = tmp_path / "images"
    write_classes(images, per_class=12, side=24)
    prepare_job(images, tmp_path / "job", validation_fraction=0, resize=16)
    lst = im2rec_list(tmp_path / "ref" / "all", images)
    im2rec("--resize", "16", "--num-thread", "1", lst.with_suffix(""), images)
    theirs = records(lst.with_suffix(".rec"))
    ours = records(tmp_path / "job/input/data/train/train.rec")
    assert set(ours) == set(theirs)
    for index, (label, data) in ours.items():
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        reference = cv2.imdecode(np.frombuffer(theirs[index][1], np.uint8), cv2.IMREAD_COLOR)
        assert min(decoded.shape[:2]) == 16
        assert label == theirs[index][0]
        np.testing.assert_array_equal(decoded, reference)


def test_class_names_reach_the_model_metadata(tmp_path: Path) -> None:
    images, base = tmp_path / "images", tmp_path / "job"
    write_classes(images, side=16)
    prepare_job(images, base, validation_fraction=0.2)
    config = base / "input/config/hyperparameters.json"
    values = json.loads(config.read_text())
    small = {"num_layers": "20", "image_shape": "3,16,16", "epochs": "1", "mini_batch_size": "8"}
    config.write_text(json.dumps({**values, **small}))
    result = run_script("train", base, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    metadata = json.loads((base / "model" / "imgcls-model.json").read_text())
    assert metadata["classes"] == sorted(CLASSES)


def one_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"a": 20, "b": 0}, r"class folder .*/b holds no image"),
        ({"a": 40}, r"has 1 class folder\(s\) \(a\)"),
        ({"a": 10, "b": 10}, r"gives 18 training images, fewer than mini_batch_size \(32"),
    ],
)
def test_bad_layouts_are_client_errors(tmp_path: Path, layout: dict, message: str) -> None:
    for name, count in layout.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        for index in range(count):
            one_image(tmp_path / "images" / name / f"{index}.png")
    with pytest.raises(ClientError, match=message):
        prepare_job(tmp_path / "images", tmp_path / "job")
    assert not (tmp_path / "job" / "input").exists()


def test_an_existing_job_is_kept_unless_forced(tmp_path: Path) -> None:
    images, base = tmp_path / "images", tmp_path / "job"
    for name in ("a", "b"):
        for index in range(20):
            one_image(images / name / f"{index}.png")
    config = base / "input" / "config" / "hyperparameters.json"
    config.parent.mkdir(parents=True)
    config.write_text('{"num_classes": "7"}')
    with pytest.raises(ClientError, match="already holds a job"):
        prepare_job(images, base)
    assert config.read_text() == '{"num_classes": "7"}'
    assert main(["prepare", str(images), str(base)]) == 1
    prepare_job(images, base, force=True)
    assert json.loads(config.read_text())["num_classes"] == "2"


def test_no_readable_image_in_a_class_names_the_folder(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for index in range(40):
        one_image(images / "good" / f"{index}.png")
    (images / "broken").mkdir()
    (images / "broken" / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ClientError, match=r"No readable training image in .*/broken"):
        prepare_job(images, tmp_path / "job")
