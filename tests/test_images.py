import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from ref2img.images import ImageInputError, decode_data_uri, decode_image, load_image, open_image
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


def test_tiff_is_refused(coffee):
    with pytest.raises(ImageInputError, match="TIFF images are not accepted"):
        decode_image(encode(coffee, "TIFF"))


def test_exif_orientation_is_honoured():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


def test_transparency_becomes_white():
    image = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert decode_image(encode(image)).getpixel((4, 4)) == (255, 255, 255)


def test_sixteen_bit_greyscale_keeps_its_range():
    ramp = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16
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


def frames(fmt: str) -> bytes:
    red, blue = Image.new("RGB", (32, 32), (255, 0, 0)), Image.new("RGB", (32, 32), (0, 0, 255))
    return encode(red, fmt, save_all=True, append_images=[blue], duration=100, loop=0)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animations_give_their_first_frame(fmt):
    assert Image.open(io.BytesIO(frames(fmt))).n_frames == 2
    red, _green, blue = decode_image(frames(fmt)).getpixel((16, 16))
    assert red > 200 and blue < 50


def test_cmyk_jpeg_becomes_rgb_with_its_colours():
    cmyk_red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    decoded = decode_image(encode(cmyk_red, "JPEG", quality=95))
    red, green, blue = decoded.getpixel((16, 16))
    assert decoded.mode == "RGB" and red > 200 and green < 60 and blue < 60


def test_palette_and_bilevel_images_become_rgb():
    palette = Image.new("RGB", (32, 32), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    assert decode_image(encode(palette)).getpixel((1, 1)) == (10, 200, 30)
    assert decode_image(encode(Image.new("1", (32, 32), 1))).getpixel((1, 1)) == (255, 255, 255)
    transparent = Image.new("P", (32, 32), 0)
    transparent.info["transparency"] = 0
    assert decode_image(encode(transparent)).getpixel((1, 1)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("size", "message"),
    [((1, 1), "too small"), ((15, 400), "too small"), ((10000, 100), "too narrow"), ((100, 1500), "too narrow")],
)
def test_extreme_shapes_are_refused_from_the_header(size, message):
    data = encode(Image.new("RGB", size, "red"))
    with pytest.raises(ImageInputError, match=message) as caught:
        open_image(data, "init_image")
    assert caught.value.code == ErrorCode.IMAGE_INVALID and str(caught.value).startswith("init_image: ")


def test_usable_extremes_are_kept():
    assert decode_image(encode(Image.new("RGB", (16, 16), "red"))).size == (16, 16)
    assert decode_image(encode(Image.new("RGB", (4000, 400), "red"))).size == (4000, 400)


def test_truncated_jpeg_is_refused(coffee):
    data = encode(coffee, "JPEG")
    open_image(data[: len(data) // 2])  # the header alone looks fine...
    with pytest.raises(ImageInputError, match="truncated or corrupt"):
        decode_image(data[: len(data) // 2])  # ...the pixels do not


def test_a_jpeg_too_short_for_its_size_is_refused_at_the_header(coffee):
    """A JPEG cut after its scan header, claiming 8000x8000: libjpeg would fill the missing scan with flat
    blocks and "succeed" at the full memory cost. No JPEG codes 64 MP in 635 bytes."""
    from ref2img.images import probe_image

    data = encode(Image.new("RGB", (8000, 8000), "red"), "JPEG", quality=10)
    scan = data.find(b"\xff\xda")
    crafted = data[: scan + 2 + int.from_bytes(data[scan + 2 : scan + 4], "big")] + b"\0" * 10 + b"\xff\xd9"
    for check in (open_image, probe_image, decode_image):
        with pytest.raises(ImageInputError, match="truncated: 635 bytes cannot hold 8000x8000"):
            check(crafted)
    flat = encode(
        Image.new("RGB", (2048, 2048), "red"), "JPEG", quality=5, progressive=True
    )  # as dense as real ones get
    assert probe_image(flat) == "JPEG" and decode_image(flat).size == (2048, 2048)


@pytest.mark.parametrize("cut", ["deflate", "last byte"])
def test_a_png_whose_pixel_stream_ends_early_is_refused_at_the_door(cut):
    """Chunk CRCs can be whole while the deflate stream inside is cut: the probe inflates it (in steps,
    dropping the output) and wants its end, at the size the header gives."""
    from ref2img.images import probe_image

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    rows = b"".join(b"\0" + bytes(range(64)) * 3 for _ in range(64))
    pixels = zlib.compress(rows)[:12] if cut == "deflate" else zlib.compress(rows[:-1])
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", pixels)
        + chunk(b"IEND", b"")
    )
    with pytest.raises(ImageInputError, match="pixel data ends early"):
        probe_image(data)
    whole = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )
    assert probe_image(whole) == "PNG"


@pytest.mark.parametrize(
    "mode, options",
    [("1", {}), ("L", {}), ("P", {"bits": 4}), ("LA", {}), ("RGBA", {}), ("I;16", {}), ("RGB", {"optimize": True})],
)
def test_every_kind_of_whole_png_passes_the_pixel_check(coffee, mode, options):
    from ref2img.images import probe_image

    image = coffee.convert("I").convert("I;16") if mode == "I;16" else coffee.convert(mode)
    assert probe_image(encode(image, "PNG", **options)) == "PNG"
