"""Image bytes -> network input, shared by serving, the image-channel packer and the
endpoint-equivalent validation figure that training logs.

OpenCV decodes, as MXNet's own image decoder does, so served images match trained ones:
CMYK JPEGs, 16-bit PNGs and PNGs with alpha all come out as 8-bit RGB (or grey). The network
input is the contract's squash to image_shape, or (inference_preprocessing=crop) what
validation does: the shorter side resized, then a centre crop.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from imgcls.data.augmentation import validation_augmenter_args
from imgcls.data.pipe.image_aug_default import augment_image
from imgcls.errors import ClientError

MAX_PIXELS = 64_000_000
# Pillow's names of the formats whose header Pillow reads and whose pixels OpenCV decodes.
HEADER_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "SUN", "JPEG2000")


class ImageTooLarge(ClientError):
    """An image whose header declares more than MAX_PIXELS pixels."""


def decode_image(data: bytes, channels: int, where: str = "the image") -> np.ndarray:
    """Decode to HxWxC uint8, RGB for channels=3, grey (HxWx1) for channels=1."""
    if not data:
        raise ClientError(f"{where} is empty: send the bytes of a JPEG or PNG image.")
    image_size(data, where)
    flag = cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), flag)
    if image is None:
        raise ClientError(f"{where} cannot be decoded as an image: send a JPEG or PNG file.")
    if channels == 1:
        return image[:, :, np.newaxis]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(data: bytes, where: str) -> tuple[int, int]:
    """(height, width) from the header alone; refuses decompression bombs (a small file that
    would decode to gigabytes of pixels) before anything is decoded.

    Only HEADER_FORMATS get through: formats whose header Pillow reads and OpenCV decodes.
    OpenCV's other formats (PAM, PFM, Radiance HDR) have no header reader here, so they are
    refused; so is any file Pillow cannot place in those formats.
    """
    try:
        with Image.open(io.BytesIO(data), formats=HEADER_FORMATS) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        over = f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        raise ImageTooLarge(_too_large(where, over)) from None
    except (OSError, ValueError, EOFError):
        raise ClientError(
            f"{where} is not an image imgcls can read ({', '.join(HEADER_FORMATS)}), or its "
            "header is damaged: send a JPEG or PNG file."
        ) from None
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(_too_large(where, f"{width}x{height} pixels"))
    return height, width


def _too_large(where: str, size: str) -> str:
    return (
        f"{where} is {size}, more than the {MAX_PIXELS:,} pixels imgcls decodes (a guard "
        "against decompression bombs): resize it to at most that."
    )


def resize_exact(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to height x width without keeping the aspect ratio or cropping (inference)."""
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2])


def to_network_input(images: list[np.ndarray]) -> np.ndarray:
    """HxWxC uint8 images -> one NCHW float32 batch of raw 0-255 pixels."""
    return np.stack(images).transpose(0, 3, 1, 2).astype(np.float32)


def resize_and_crop(
    image: np.ndarray, shorter_side: int, height: int, width: int, where: str = "the image"
) -> np.ndarray:
    """Shorter side resized to `shorter_side`, then the centre height x width: ImageRecordIter's
    validation augmenter (its OpenCV port, which Pipe-mode validation uses too)."""
    args = validation_augmenter_args(shorter_side)
    return augment_image(image, args, (height, width), np.random.default_rng(0), where)


def crop_shorter_side(
    resize: int | None, image_shape: tuple[int, int, int], smallest_side: int = 0
) -> int:
    """The shorter side inference_preprocessing=crop resizes to: `resize` when set, else the
    training images' own scale (their smallest shorter side), at least image_shape's sides."""
    return resize or max(smallest_side, image_shape[1], image_shape[2])


def prepare(
    data: bytes,
    image_shape: tuple[int, int, int],
    where: str = "the image",
    shorter_side: int | None = None,
) -> np.ndarray:
    """Bytes -> 1xCxHxW float32: squashed to image_shape, as the contract's inference
    preprocessing says, or with `shorter_side` resized and centre-cropped (crop)."""
    channels, height, width = image_shape
    image = decode_image(data, channels, where)
    if shorter_side is None:
        return to_network_input([resize_exact(image, height, width)])
    return to_network_input([resize_and_crop(image, shorter_side, height, width, where)])
