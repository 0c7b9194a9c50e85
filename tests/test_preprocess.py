"""The shared image preprocessing of serving and the image-channel packer."""

import io
import struct

import cv2
import mxnet as mx
import numpy as np
import pytest
from PIL import Image
from serving_support import encode_jpeg, encode_png, flat_png, forbid_decoding, random_image

from imgcls.data.preprocess import (
    MAX_PIXELS,
    ImageTooLarge,
    decode_image,
    image_size,
    jpeg_size,
    prepare,
)
from imgcls.errors import ClientError

BOMB_SIDES = [(20000, 20000), (10000, 10000), (8001, 8000)]


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 1
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 2_000_000
    with pytest.raises(ClientError, match=f"{side}x{side} pixels"):
        decode_image(buffer.getvalue(), 3, "the request")


def test_the_flat_png_helper_is_a_valid_png_of_its_declared_size() -> None:
    data = flat_png(37, 11)
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).shape == (11, 37)
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        assert image.size == (37, 11) and image.getextrema() == (0, 0)


def _bmp(width: int, height: int) -> bytes:
    data = bytearray(cv2.imencode(".bmp", random_image(0, 8, 8))[1].tobytes())
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER biWidth, biHeight
    return bytes(data)


def _ppm(width: int, height: int) -> bytes:
    return f"P6\n{width} {height}\n255\n".encode() + bytes(8 * 8 * 3)


def _jpeg(width: int, height: int) -> bytes:
    data = bytearray(encode_jpeg(random_image(0, 8, 8)))
    sof = data.index(b"\xff\xc0")  # baseline SOF0: length, precision, height, width
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


HEADERS = {"png": flat_png, "bmp": _bmp, "ppm": _ppm, "jpeg": _jpeg}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("size", BOMB_SIDES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("kind", HEADERS)
def test_every_size_above_the_limit_is_refused_from_the_header(kind, size, monkeypatch) -> None:
    """Also above Pillow's own limit (~179 MP), where Pillow's DecompressionBombError used to
    be swallowed and OpenCV decoded the image in full."""
    data = HEADERS[kind](*size)
    forbid_decoding(monkeypatch, data)
    with pytest.raises(ImageTooLarge, match=f"more than the {MAX_PIXELS:,} pixels") as raised:
        decode_image(data, 3, "the request")
    assert str(raised.value).startswith("the request is ")
    if size[0] * size[1] <= 2 * Image.MAX_IMAGE_PIXELS:
        assert f"{size[0]}x{size[1]} pixels" in str(raised.value)


@pytest.mark.parametrize("kind", HEADERS)
def test_an_image_at_the_limit_passes_the_header_check(kind, monkeypatch) -> None:
    """8000x8000 = MAX_PIXELS reaches the decoder (a stand-in here: no 64 MP decode in tests)."""
    decoded = []

    def stand_in(buffer: np.ndarray, flags: int) -> np.ndarray:
        decoded.append(buffer.size)
        return np.zeros((2, 2, 3), np.uint8)

    monkeypatch.setattr(cv2, "imdecode", stand_in)
    data = HEADERS[kind](8000, 8000)
    assert decode_image(data, 3).shape == (2, 2, 3) and decoded == [len(data)]


@pytest.mark.parametrize("ext", [".pam", ".hdr"])
def test_formats_without_a_header_reader_are_refused_not_decoded(ext, monkeypatch) -> None:
    """OpenCV decodes PAM and Radiance HDR, but Pillow cannot read their size first."""
    pixels = random_image(0, 8, 8)
    data = cv2.imencode(ext, pixels.astype(np.float32) if ext == ".hdr" else pixels)[1].tobytes()
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).shape == (8, 8, 3)
    forbid_decoding(monkeypatch, data)
    with pytest.raises(ClientError, match="send a JPEG or PNG file") as raised:
        decode_image(data, 3, "the request")
    assert not isinstance(raised.value, ImageTooLarge)


def test_a_streamed_bomb_in_pipe_mode_is_refused_naming_its_record(monkeypatch) -> None:
    from types import SimpleNamespace

    from imgcls.data.pipe.batches import PipeBatches
    from imgcls.data.pipe.examples import Example

    bomb = flat_png(20000, 20000)
    forbid_decoding(monkeypatch, bomb)
    source = SimpleNamespace(num_classes=2, multi_label=False, decode_hint="")
    batches = PipeBatches(source, batch_size=1, image_shape=(3, 8, 8), augment={}, shuffle=False)
    example = Example("train_0, record 3", bomb, np.zeros(1, np.float32))
    with pytest.raises(ImageTooLarge, match=r"^train_0, record 3 is over .* 64,000,000 pixels"):
        batches.transform(example, seed=0)


def test_a_recordio_channel_refuses_a_bomb_from_its_header_naming_the_record(tmp_path) -> None:
    import mxnet as mx

    from imgcls.data.recordio import scan_records

    path = tmp_path / "bomb.rec"
    writer = mx.recordio.MXRecordIO(str(path), "w")
    writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, 7, 0), flat_png(20000, 20000)))
    writer.close()
    with pytest.raises(
        ClientError, match=r"record 0 \(id 7\) is over [0-9,]+ pixels, more than the 64,000,000"
    ):
        scan_records([path], num_classes=2, min_size=(8, 8))


def jpeg_variants() -> dict[str, bytes]:
    """JPEGs as encoders write them: OpenCV (with restart markers too) and Pillow (progressive,
    optimised, grey, CMYK, with EXIF and an ICC profile), at odd sizes."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    photo = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the frame header's size is still the stored one
    pillow = {
        "pillow baseline": {},
        "pillow progressive": {"progressive": True},
        "pillow optimised": {"optimize": True},
        "pillow exif and icc": {"exif": exif, "icc_profile": b"\0" * 2000},
    }
    variants = {}
    for name, options in pillow.items():
        out = io.BytesIO()
        photo.save(out, "JPEG", **options)
        variants[name] = out.getvalue()
    for name, mode in (("pillow grey", "L"), ("pillow cmyk", "CMYK")):
        out = io.BytesIO()
        photo.convert(mode).save(out, "JPEG")
        variants[name] = out.getvalue()
    variants["opencv"] = cv2.imencode(".jpg", pixels)[1].tobytes()
    restarts = [cv2.IMWRITE_JPEG_RST_INTERVAL, 2]
    variants["opencv restarts"] = cv2.imencode(".jpg", pixels, restarts)[1].tobytes()
    variants["one pixel"] = cv2.imencode(".jpg", pixels[:1, :1])[1].tobytes()
    return variants


def pillow_size(data: bytes) -> tuple[int, int] | None:
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            return image.size[1], image.size[0]
    except (OSError, ValueError, EOFError, SyntaxError):
        return None


def test_the_jpeg_header_reader_gives_pillows_size_for_every_encoder() -> None:
    for name, data in jpeg_variants().items():
        assert jpeg_size(data) is not None, name
        assert jpeg_size(data) == pillow_size(data), name
        assert image_size(data, name) == pillow_size(data), name


def test_the_jpeg_header_reader_accepts_no_damaged_header_that_pillow_refuses() -> None:
    """Cut or changed anywhere in the header (up to the first scan), a JPEG that Pillow
    refuses makes the reader hand over to Pillow (None); whatever it reads is Pillow's size."""
    rng = np.random.default_rng(1)
    read = 0
    for name, data in jpeg_variants().items():
        header_end = data.index(b"\xff\xda") + 2
        damaged = [data[:cut] for cut in range(header_end)]
        for _ in range(150):
            changed = bytearray(data)
            changed[int(rng.integers(2, header_end))] = int(rng.integers(256))
            damaged.append(bytes(changed))
        for sample in damaged:
            size = jpeg_size(sample)
            if size is not None:
                read += 1
                assert size == pillow_size(sample), name
    assert read > 100  # the changes that keep the framing valid were read, not all handed over


def record_iter_pixels(data: bytes, channels: int, folder) -> np.ndarray:
    """What training sees of `data`: MXNet's ImageRecordIter on a record holding those bytes,
    at their own size (20x24: no resize, no crop), as CxHxW float32."""
    path = folder / f"one-{channels}.rec"
    writer = mx.recordio.MXRecordIO(str(path), "w")
    writer.write(mx.recordio.pack(mx.recordio.IRHeader(0, 0.0, 0, 0), data))
    writer.close()
    reader = mx.io.ImageRecordIter(
        path_imgrec=str(path), data_shape=(channels, 20, 24), batch_size=1
    )
    return next(iter(reader)).data[0].asnumpy()[0]


@pytest.mark.parametrize(
    ("source_channels", "encode", "channels"),
    [(3, "png", 1), (3, "jpeg", 1), (1, "png", 3), (1, "jpeg", 3), (3, "jpeg", 3)],
    ids=["rgb-png-to-grey", "rgb-jpeg-to-grey", "grey-png-to-rgb", "grey-jpeg-to-rgb", "rgb-jpeg"],
)
def test_the_served_pixels_of_a_converted_image_are_the_ones_training_sees(
    tmp_path, source_channels, encode, channels
) -> None:
    """A colour image sent to a grey model, or a grey one to a colour model: the server's
    conversion must give the pixels MXNet's ImageRecordIter gave the network in training."""
    image = random_image(seed=3, channels=source_channels)
    data = (encode_png if encode == "png" else encode_jpeg)(image)
    served = prepare(data, (channels, 20, 24))[0]
    np.testing.assert_array_equal(served, record_iter_pixels(data, channels, tmp_path))
