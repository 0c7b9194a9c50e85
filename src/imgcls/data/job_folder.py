"""`imgcls prepare`: a folder of class subfolders turned into a ready training job folder.

BASE_DIR gets what SageMaker would give the container: `input/data/train` and
`input/data/validation` as RecordIO (im2rec.py-compatible records with their .idx), the train
channel's `classes.json`, `input/config/inputdataconfig.json`, and
`input/config/hyperparameters.json` with num_classes and num_training_samples (strings, as
SageMaker writes them), every other hyperparameter at its default. Everything is written in a
staging folder first: a failure leaves BASE_DIR as it was, and an existing job is only
replaced with `force`.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import mxnet as mx
from tqdm import tqdm

from imgcls.config.content_types import RECORDIO
from imgcls.config.hyperparameters import PARAMS_BY_NAME
from imgcls.data.class_folders import (
    CLASSES_FILE,
    LabelledImage,
    list_class_folders,
    stratified_split,
)
from imgcls.data.packing import IN_FLIGHT_PER_WORKER, Packed, encode_image, in_order
from imgcls.errors import ClientError
from imgcls.log import logger
from imgcls.system import cpu_count

JOB_PARTS = ("input/config/hyperparameters.json", "input/config/inputdataconfig.json")
CHANNEL_PARTS = ("input/data/train", "input/data/validation")


@dataclass
class PackedChannel:
    """What packing one channel gave: the records per class, the images that failed, the
    smallest (height, width) packed."""

    counts: list[int]
    bad: list[str] = field(default_factory=list)
    min_size: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class PreparedJob:
    """A job folder written by `prepare_job`."""

    base_dir: Path
    classes: list[str]
    train: PackedChannel
    validation: PackedChannel | None

    @property
    def bad(self) -> list[str]:
        return self.train.bad + (self.validation.bad if self.validation else [])


def prepare_job(
    images_dir: Path,
    base_dir: Path,
    validation_fraction: float = 0.1,
    resize: int | None = None,
    seed: int = 0,
    force: bool = False,
) -> PreparedJob:
    """Write a training job for the class folders of `images_dir` under `base_dir`."""
    images_dir, base_dir = Path(images_dir), Path(base_dir)
    _check_free(base_dir, force)
    classes, images = list_class_folders(images_dir)
    train, validation = stratified_split(images, validation_fraction, seed)
    base_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".imgcls-prepare-", dir=base_dir) as tmp:
        staging = Path(tmp)
        packed = {
            name: _pack(images_dir, split, staging / CHANNEL_PARTS[i], name, len(classes), resize)
            for i, (name, split) in enumerate((("train", train), ("validation", validation)))
            if split
        }
        if "validation" in packed and not sum(packed["validation"].counts):
            del packed["validation"]
        _check_counts(images_dir, classes, packed["train"])
        _write_config(staging, classes, packed)
        _move_into(staging, base_dir)
    return PreparedJob(base_dir, classes, packed["train"], packed.get("validation"))


def _check_free(base_dir: Path, force: bool) -> None:
    existing = [part for part in (*JOB_PARTS, *CHANNEL_PARTS) if (base_dir / part).exists()]
    if existing and not force:
        raise ClientError(
            f"{base_dir} already holds a job ({', '.join(existing)}): choose another folder, or "
            "pass --force to replace those files."
        )


def _pack(
    root: Path,
    images: list[LabelledImage],
    folder: Path,
    name: str,
    num_classes: int,
    resize: int | None,
) -> PackedChannel:
    """Pack `images` into folder/<name>.rec (+ .idx) on every core; bad images are listed."""
    folder.mkdir(parents=True)
    result = PackedChannel(counts=[0] * num_classes)
    sizes: list[tuple[int, int]] = []
    rec = folder / f"{name}.rec"
    writer = mx.recordio.MXIndexedRecordIO(str(rec.with_suffix(".idx")), str(rec), "w")

    def encode(image: LabelledImage) -> Packed | str:
        path = root / image.path
        try:
            return encode_image(
                root, image.path, float(image.label), image.index, 3, str(path), resize
            )
        except ClientError:
            return f"{path}: cannot be read or decoded as an image"

    workers = cpu_count()
    try:
        with (
            ThreadPoolExecutor(workers, thread_name_prefix="imgcls-prepare") as pool,
            tqdm(
                total=len(images),
                desc=f"Packing {name}",
                unit="image",
                disable=None,
                file=sys.stderr,
            ) as progress,
        ):
            outputs = in_order(pool, encode, images, workers * IN_FLIGHT_PER_WORKER)
            for image, packed in zip(images, outputs, strict=True):
                progress.update()
                if isinstance(packed, str):
                    result.bad.append(packed)
                    continue
                writer.write_idx(image.index, packed.record)
                result.counts[image.label] += 1
                sizes.append(packed.size)
    finally:
        writer.close()
    if sizes:
        result.min_size = (min(h for h, _ in sizes), min(w for _, w in sizes))
    for reason in result.bad:
        logger.warning("Skipped: %s", reason)
    return result


def _check_counts(root: Path, classes: list[str], train: PackedChannel) -> None:
    """Every class needs a training image, and training at least mini_batch_size images."""
    if empty := [root / classes[i] for i, n in enumerate(train.counts) if n == 0]:
        raise ClientError(
            f"No readable training image in {', '.join(map(str, empty))} (see the skipped images "
            "above): add valid JPEG or PNG images there, or remove the folder."
        )
    batch = PARAMS_BY_NAME["mini_batch_size"].default
    if (total := sum(train.counts)) < batch:
        raise ClientError(
            f"{root} gives {total} training images, fewer than mini_batch_size ({batch}, its "
            "default), so a job could not fill one batch: add images to the class folders or "
            "lower --validation-fraction."
        )


def _write_config(staging: Path, classes: list[str], packed: dict[str, PackedChannel]) -> None:
    config = staging / "input" / "config"
    config.mkdir(parents=True)
    hyperparameters = {
        "num_classes": str(len(classes)),
        "num_training_samples": str(sum(packed["train"].counts)),
    }
    channels = {
        name: {
            "ContentType": RECORDIO,
            "TrainingInputMode": "File",
            "S3DistributionType": "FullyReplicated",
            "RecordWrapperType": "None",
        }
        for name in packed
    }
    _write_json(config / "hyperparameters.json", hyperparameters)
    _write_json(config / "inputdataconfig.json", channels)
    _write_json(staging / CHANNEL_PARTS[0] / CLASSES_FILE, classes)


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")


def _move_into(staging: Path, base_dir: Path) -> None:
    """Replace the job's files in `base_dir` by the staged ones (other files stay)."""
    for part in (*JOB_PARTS, *CHANNEL_PARTS):
        target = base_dir / part
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
        if (staging / part).exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            (staging / part).rename(target)
