"""Image bytes -> network input, shared by serving, the image-channel packer and the
endpoint-equivalent validation figure that training logs.

OpenCV decodes, as MXNet's own image decoder does, so served images match trained ones:
CMYK JPEGs, 16-bit PNGs and PNGs with alpha all come out as 8-bit RGB (or grey). The network
input is the contract's squash to image_shape, or (inference_preprocessing=crop) what
validation does: the shorter side resized, then a centre crop.
"""

from __future__ import annotations

import functools
import io
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
from PIL import Image

from imgcls.data.augmentation import validation_augmenter_args
from imgcls.data.pipe.image_aug_default import augment_image
from imgcls.errors import ClientError
from imgcls.system import cpu_count

MAX_PIXELS = 64_000_000
# Pillow's names of the formats whose header Pillow reads and whose pixels OpenCV decodes.
HEADER_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "PPM", "SUN", "JPEG2000")


# JPEG markers as Pillow reads them: frame headers (SOF0-15 but DHT, JPG, DAC; and DHP), the
# quantisation tables, restarts (no length field), the first scan. The reader below hands over
# to Pillow at markers Pillow reads without a length (JPG, SOI, EOI, JPG0-13) or does not know.
JPEG_FRAMES = (frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}) | {0xDE}
JPEG_TABLES, JPEG_SCAN = 0xDB, 0xDA
JPEG_RESTARTS = frozenset(range(0xD0, 0xD8))
JPEG_HANDED_OVER = frozenset(range(0xC0)) | {0xC8, 0xD8, 0xD9} | frozenset(range(0xF0, 0xFE))


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


SEND_AN_IMAGE = "send a JPEG or PNG file."


def image_size(data: bytes, where: str, fix: str = SEND_AN_IMAGE) -> tuple[int, int]:
    """(height, width) from the header alone; refuses decompression bombs (a small file that
    would decode to gigabytes of pixels) before anything is decoded. `fix` ends the message of
    an unreadable header (the default suits a request).

    Only HEADER_FORMATS get through: formats whose header Pillow reads and OpenCV decodes.
    OpenCV's other formats (PAM, PFM, Radiance HDR) have no header reader here, so they are
    refused; so is any file Pillow cannot place in those formats.
    """
    try:
        height, width = jpeg_size(data) or _pillow_size(data)
    except Image.DecompressionBombError:
        over = f"over {2 * Image.MAX_IMAGE_PIXELS:,} pixels"
        raise ImageTooLarge(_too_large(where, over)) from None
    except (OSError, ValueError, EOFError):
        raise ClientError(
            f"{where} is not an image imgcls can read ({', '.join(HEADER_FORMATS)}), or its "
            f"header is damaged: {fix}"
        ) from None
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(_too_large(where, f"{width}x{height} pixels"))
    return height, width


def _pillow_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data), formats=HEADER_FORMATS) as image:
        width, height = image.size
    return height, width


def jpeg_size(data: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG whose segments are well framed from its start to its first
    scan, read from its frame header; None otherwise, and Pillow decides. Written by hand
    because Pillow parses every table on the way: 4x slower, most of a channel scan's time."""
    if not data.startswith(b"\xff\xd8"):
        return None
    size, at = None, 2
    while at + 4 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # a fill byte
            at += 1
            continue
        if marker in JPEG_RESTARTS:
            at += 2
            continue
        if marker == JPEG_SCAN:
            return size
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        segment = data[at + 4 : at + 2 + length]
        if marker in JPEG_HANDED_OVER or length < 2 or len(segment) != length - 2:
            return None
        if marker in JPEG_FRAMES:
            if size is not None or not _decodable_frame(segment):
                return None
            size = int.from_bytes(segment[1:3], "big"), int.from_bytes(segment[3:5], "big")
        if marker == JPEG_TABLES and not _whole_tables(segment):
            return None
        at += 2 + length
    return None


def _decodable_frame(frame: bytes) -> bool:
    """A frame header Pillow takes: 8-bit samples, a non-zero size, 1, 3 or 4 components,
    3 bytes per component description."""
    if len(frame) < 6 or (len(frame) - 6) % 3:
        return False
    height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
    return frame[0] == 8 and height > 0 and width > 0 and frame[5] in (1, 3, 4)


def _whole_tables(segment: bytes) -> bool:
    """True when a DQT segment holds whole tables (64 entries of 1 or 2 bytes each)."""
    while segment:
        length = 1 + 64 * (1 if segment[0] < 16 else 2)
        if len(segment) < length:
            return False
        segment = segment[length:]
    return True


def _too_large(where: str, size: str) -> str:
    return (
        f"{where} is {size}, more than the {MAX_PIXELS:,} pixels imgcls decodes (a guard "
        "against decompression bombs): resize it to at most that."
    )


def resize_exact(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize to height x width without keeping the aspect ratio or cropping (inference)."""
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, image.shape[2])


def to_network_pixels(images: list[np.ndarray]) -> np.ndarray:
    """HxWxC uint8 images -> one contiguous NCHW uint8 batch."""
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2))


def to_network_input(images: list[np.ndarray]) -> np.ndarray:
    """HxWxC uint8 images -> one NCHW float32 batch of raw 0-255 pixels."""
    return to_network_pixels(images).astype(np.float32)


@functools.cache
def decode_pool() -> ThreadPoolExecutor:
    """One thread per core for decoding and resizing: OpenCV releases the GIL while it works."""
    return ThreadPoolExecutor(cpu_count(), thread_name_prefix="imgcls-decode")


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
    """Bytes -> 1xCxHxW float32: `network_pixels` as a batch of one."""
    return to_network_input([network_pixels(data, image_shape, where, shorter_side)])


def network_pixels(
    data: bytes,
    image_shape: tuple[int, int, int],
    where: str = "the image",
    shorter_side: int | None = None,
) -> np.ndarray:
    """Bytes -> HxWxC uint8: squashed to image_shape, as the contract's inference
    preprocessing says, or with `shorter_side` resized and centre-cropped (crop)."""
    channels, height, width = image_shape
    image = decode_image(data, channels, where)
    if shorter_side is None:
        return resize_exact(image, height, width)
    return resize_and_crop(image, shorter_side, height, width, where)
