"""A folder of images with one subfolder per class, as `im2rec.py --list --recursive` reads it.

Classes are the subfolder names in sorted order, labelled from 0 (im2rec.py's labels when every
image sits directly in its class folder; an image in a deeper folder belongs to its top-level
class here, where im2rec.py would make that folder a class of its own). The class names travel
with the job as `classes.json` in the train channel, a JSON list whose position is the label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.config.channels import IMAGE_SUFFIXES
from imgcls.errors import ClientError

CLASSES_FILE = "classes.json"


@dataclass(frozen=True)
class LabelledImage:
    """One image: its id (position in the sorted listing), path under the root, and class."""

    index: int
    path: Path
    label: int


def list_class_folders(root: Path) -> tuple[list[str], list[LabelledImage]]:
    """The class names and every image under `root`, in sorted order."""
    root = Path(root)
    if not root.is_dir():
        raise ClientError(f"{root} is not a folder: give a folder with one subfolder per class.")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(folders) < 2:
        found = ", ".join(p.name for p in folders) or "none"
        raise ClientError(
            f"{root} has {len(folders)} class folder(s) ({found}); a classifier needs at least 2: "
            "put each class's images in its own subfolder."
        )
    images: list[LabelledImage] = []
    for label, folder in enumerate(folders):
        files = _image_files(folder)
        if not files:
            raise ClientError(
                f"The class folder {folder} holds no image ({', '.join(IMAGE_SUFFIXES)}): add "
                "images or remove the folder."
            )
        images += [
            LabelledImage(len(images) + i, f.relative_to(root), label) for i, f in enumerate(files)
        ]
    return [p.name for p in folders], images


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def stratified_split(
    images: list[LabelledImage], fraction: float, seed: int
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """(train, validation), each shuffled: round(n · fraction) images of every class go to
    validation (at least one when fraction > 0, never a class's last one)."""
    if not 0 <= fraction < 1:
        raise ClientError(f"The validation fraction must be in [0, 1), got {fraction}.")
    rng = np.random.default_rng(seed)
    train: list[LabelledImage] = []
    validation: list[LabelledImage] = []
    for label in sorted({image.label for image in images}):
        members = [images[i] for i in rng.permutation(len(images)) if images[i].label == label]
        count = min(len(members) - 1, max(1 if fraction > 0 else 0, round(len(members) * fraction)))
        validation += members[:count]
        train += members[count:]
    return _shuffled(train, rng), _shuffled(validation, rng)


def _shuffled(images: list[LabelledImage], rng: np.random.Generator) -> list[LabelledImage]:
    return [images[i] for i in rng.permutation(len(images))]


def read_class_names(channel_dir: Path | None, num_classes: int) -> list[str] | None:
    """The class names of a train channel's `classes.json`, or None when it has none."""
    path = Path(channel_dir) / CLASSES_FILE if channel_dir else None
    if path is None or not path.is_file():
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ClientError(f"Cannot read {path}: {e}. Write a JSON list of class names.") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ClientError(f"{path} must hold a JSON list of class names (label = position).")
    if len(names) != num_classes:
        raise ClientError(
            f"{path} names {len(names)} classes but num_classes is {num_classes}: make them agree."
        )
    return names
