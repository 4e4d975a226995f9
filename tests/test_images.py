import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ref2img.images import ImageInputError, decode_data_uri, decode_image, load_image
from ref2img.protocol import ErrorCode


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width×height but carries almost no data (a decompression bomb's header)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_round_trip_formats(coffee):
    for fmt in ("PNG", "JPEG", "WEBP"):
        image = decode_image(encode(coffee, fmt))
        assert image.size == coffee.size and image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"just some text, not an image", "not an image"),
        (png_header_only(30000, 30000), "megapixel limit"),
    ],
)
def test_refusals_are_clear(data, message):
    with pytest.raises(ImageInputError) as caught:
        decode_image(data, "reference_image")
    assert caught.value.code == ErrorCode.IMAGE_INVALID
    assert caught.value.field == "reference_image"
    assert message in str(caught.value)


def test_truncated_png_is_refused(coffee):
    data = encode(coffee)
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])


def test_gif_is_refused(coffee):
    with pytest.raises(ImageInputError, match="GIF images are not accepted"):
        decode_image(encode(coffee, "GIF"))


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_transparency_becomes_white():
    image = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert decode_image(encode(image)).getpixel((4, 4)) == (255, 255, 255)


def test_sixteen_bit_greyscale_keeps_its_range():
    ramp = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)
    decoded = np.asarray(decode_image(encode(Image.fromarray(ramp))))
    assert decoded.min() == 0 and decoded.max() >= 250


def test_data_uri(coffee):
    uri = "data:image/png;base64," + base64.b64encode(encode(coffee)).decode()
    assert decode_data_uri(uri).size == coffee.size
    with pytest.raises(ImageInputError) as caught:
        decode_data_uri("data:text/plain;base64,aGVsbG8=")
    assert caught.value.code == ErrorCode.IMAGE_FETCH_FAILED


def test_load_image_missing_file(tmp_path):
    with pytest.raises(ImageInputError) as caught:
        load_image(tmp_path / "nope.png", "init_image")
    assert caught.value.code == ErrorCode.IMAGE_FETCH_FAILED
    assert "no such file" in str(caught.value)
