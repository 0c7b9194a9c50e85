"""The shared image preprocessing of serving and the image-channel packer."""

import io

import pytest
from PIL import Image

from imgcls.data.preprocess import MAX_PIXELS, decode_image
from imgcls.errors import ClientError


def test_decompression_bomb_is_refused_before_decoding() -> None:
    side = int(MAX_PIXELS**0.5) + 1
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 2_000_000
    with pytest.raises(ClientError, match=f"{side}x{side} pixels"):
        decode_image(buffer.getvalue(), 3, "the request")
