"""ImageRecordIter's default augmenter in OpenCV and numpy, for images streamed from a pipe.

It takes the arguments augment.py gives ImageRecordIter and applies them in the same order as
MXNet's C++ augmenter (src/io/image_aug_default.cc): shorter side resized to `resize`; affine
transform (`max_rotate_angle`, `max_shear_ratio`, `max_aspect_ratio`, fill 255); crop to
image_shape (random with `rand_crop`, else centred); hue/lightness/saturation offsets
(`random_h`, `random_l`, `random_s`); horizontal flip with `rand_mirror`. Images are RGB (or grey).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from imgcls.errors import ClientError

AFFINE_KEYS = ("max_rotate_angle", "max_shear_ratio", "max_aspect_ratio")
COLOR_KEYS = ("random_h", "random_s", "random_l")
FILL_VALUE = 255


def augment_image(
    image: np.ndarray,
    args: dict[str, Any],
    shape: tuple[int, int],
    rng: np.random.Generator,
    where: str,
) -> np.ndarray:
    """HxWxC uint8 -> shape[0] x shape[1] x C uint8, augmented as `args` say."""
    if args.get("resize"):
        image = _resize_shorter_side(image, args["resize"])
    if any(args.get(key) for key in AFFINE_KEYS):
        image = _affine(image, args, rng)
    image = _crop(image, shape, bool(args.get("rand_crop")), rng, where)
    if image.shape[2] == 3 and any(args.get(key) for key in COLOR_KEYS):
        image = _hls_offsets(image, args, rng)
    if args.get("rand_mirror") and rng.random() < 0.5:
        image = image[:, ::-1]
    return image


def _shaped(image: np.ndarray, channels: int) -> np.ndarray:
    """OpenCV drops the channel axis of one-channel images; put it back."""
    return image.reshape(image.shape[0], image.shape[1], channels)


def _resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    rows, cols, channels = image.shape
    if rows > cols:
        height, width = size * rows // cols, size
    else:
        height, width = size, size * cols // rows
    return _shaped(cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR), channels)


def _affine(image: np.ndarray, args: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    rows, cols, channels = image.shape
    shear_max = args.get("max_shear_ratio", 0.0)
    aspect_max = args.get("max_aspect_ratio", 0.0)
    angle_max = int(args.get("max_rotate_angle", 0))
    shear = rng.random() * shear_max * 2 - shear_max
    angle = math.radians(rng.integers(-angle_max, angle_max, endpoint=True))
    ratio = rng.random() * aspect_max * 2 - aspect_max + 1
    cos, sin = math.cos(angle), math.sin(angle)
    hs = 2 / (1 + ratio)
    ws = ratio * hs
    matrix = np.array(
        [[hs * cos - shear * sin * ws, hs * sin + shear * cos * ws, 0], [-sin * ws, cos * ws, 0]],
        dtype=np.float32,
    )
    matrix[0, 2] = (cols - matrix[0, 0] * cols - matrix[0, 1] * rows) / 2
    matrix[1, 2] = (rows - matrix[1, 0] * cols - matrix[1, 1] * rows) / 2
    warped = cv2.warpAffine(
        image,
        matrix,
        (cols, rows),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=(FILL_VALUE,) * 3,
    )
    return _shaped(warped, channels)


def _crop(
    image: np.ndarray, shape: tuple[int, int], random: bool, rng: np.random.Generator, where: str
) -> np.ndarray:
    height, width = shape
    rows, cols = image.shape[:2]
    if rows < height or cols < width:
        raise ClientError(
            f"{where}: image is {rows}x{cols} (after resize), smaller than image_shape's "
            f"{height}x{width}. Set resize, use a smaller image_shape, or drop the image."
        )
    if random:
        y = int(rng.integers(0, rows - height, endpoint=True))
        x = int(rng.integers(0, cols - width, endpoint=True))
    else:
        y, x = (rows - height) // 2, (cols - width) // 2
    return image[y : y + height, x : x + width]


def _hls_offsets(image: np.ndarray, args: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
    offsets = [
        int(rng.random() * args.get(key, 0) * 2 - args.get(key, 0))
        for key in ("random_h", "random_l", "random_s")
    ]
    hls = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2HLS).astype(np.int16)
    hls += np.array(offsets, dtype=np.int16)
    np.clip(hls, 0, np.array([180, 255, 255], dtype=np.int16), out=hls)
    return cv2.cvtColor(hls.astype(np.uint8), cv2.COLOR_HLS2RGB)
