"""`augmentation_type` and `resize` as the arguments of MXNet's native image augmenter."""

from __future__ import annotations

from typing import Any

CROP = {"rand_crop": True, "rand_mirror": True}
COLOR = {"random_h": 36, "random_s": 50, "random_l": 50}
TRANSFORM = {"max_rotate_angle": 10, "max_shear_ratio": 0.1, "max_aspect_ratio": 0.25}

AUGMENTATIONS: dict[str | None, dict[str, Any]] = {
    None: {},
    "crop": CROP,
    "crop_color": {**CROP, **COLOR},
    "crop_color_transform": {**CROP, **COLOR, **TRANSFORM},
}


def train_augmenter_args(augmentation_type: str | None, resize: int | None) -> dict[str, Any]:
    """ImageRecordIter arguments for training: the spec's augmentation, else a centre crop."""
    return {**AUGMENTATIONS[augmentation_type], **resize_args(resize)}


def validation_augmenter_args(resize: int | None) -> dict[str, Any]:
    """Validation never augments: resize (when set), then a centre crop."""
    return resize_args(resize)


def resize_args(resize: int | None) -> dict[str, Any]:
    """`resize` is the shorter side in pixels; unset means images are used as they are."""
    return {"resize": resize} if resize else {}
