"""Reading input images safely: from bytes, a local path, an http(s) URL or a `data:` URI.

Decoding refuses anything that is not a JPEG, PNG, WebP or GIF, images over the pixel cap (a
decompression-bomb guard that Pillow checks from the header, before decoding), images too small or too
narrow to use, and truncated files. It honours EXIF orientation and takes the first frame of animations;
CMYK, palette, 16-bit and transparent images become plain RGB (transparency as white).
"""

from __future__ import annotations

import base64
import binascii
import io
import struct
import threading
import warnings
import zlib
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ref2img.protocol import ErrorCode

# MPO: the multi-picture JPEGs phones write; GIF: its first frame, as for animated WebP.
ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "MPO", "GIF"}
DEFAULT_MAX_IMAGE_MB = 20  # `--max-image-mb`: one version of the skill's docs allows 200 MB
MAX_IMAGE_MB_RANGE = (1, 1024)
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
MIN_IMAGE_SIDE = 16  # below this there are no edges, pose or depth to keep
MAX_ASPECT_RATIO = 10  # the output (at most 4:1) is cropped from the middle: a 100:1 strip would keep 1/25 of it
FETCH_TIMEOUT_S = 20.0
# `probe_image` decodes formats with no cheap full check only up to this size; larger ones are left to
# the worker's decode. 16 MP of RGBA is 64 MB.
FULL_PROBE_PIXELS = 16 * 1024 * 1024
# Every 8x8 block of a JPEG codes its DC coefficient in at least one bit with Huffman coding (64 pixels a
# bit, 512 a byte); 4096 pixels a byte leaves 8x room for arithmetic coding. Anything denser is truncated.
JPEG_PIXELS_PER_BYTE = 4096
PNG_INFLATE_STEP = 1 << 20  # inflated a megabyte at a time and dropped: memory stays flat
PROBES_AT_ONCE = 2  # request threads probing at once: the others wait their turn, memory stays bounded
_probes = threading.BoundedSemaphore(PROBES_AT_ONCE)
MIB = 1024 * 1024
# The largest input image file, however it comes (fetch, upload, path, data URI). Each way in passes its
# own node's cap (`image_cap_bytes(--max-image-mb)`, held by the backend or the MCP server that enforces
# it); this default is what a caller with no setting gets. Nothing here is changed at run time.
DEFAULT_MAX_IMAGE_BYTES = DEFAULT_MAX_IMAGE_MB * MIB


def image_cap_bytes(megabytes: int) -> int:
    """`--max-image-mb` in bytes, checked against its range."""
    low, high = MAX_IMAGE_MB_RANGE
    if not low <= megabytes <= high:
        raise ValueError(f"max_image_mb: must be an integer from {low} to {high} (got {megabytes})")
    return megabytes * MIB


def _over_cap(what: str, max_bytes: int) -> str:
    return f"{what} is over {max_bytes // MIB} MB (the server's --max-image-mb)"


class ImageInputError(ValueError):
    """An input image could not be fetched (680002) or is not a usable image (680003)."""

    def __init__(self, field: str, message: str, code: ErrorCode = ErrorCode.IMAGE_INVALID):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


def open_image(data: bytes, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """Open `data` and check what its header tells (format, pixel count, shape) without decoding the
    pixels: cheap enough for the request path. `decode_image` then finds truncation and corruption."""
    if not data:
        raise ImageInputError(field, "the file is empty (0 bytes)")
    if len(data) > max_bytes:
        raise ImageInputError(field, _over_cap("the file", max_bytes))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageInputError(
            field, "the data is not an image Pillow can read (JPEG, PNG, WebP or GIF expected)"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses from the header alone, before allocating anything.
        raise ImageInputError(
            field, f"the image is over the {MAX_IMAGE_PIXELS // (1024 * 1024)}-megapixel limit"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageInputError(field, f"the image is truncated or corrupt ({exc})") from None
    if image.format not in ALLOWED_FORMATS:
        raise ImageInputError(field, f"{image.format or 'this'} images are not accepted; use JPEG, PNG, WebP or GIF")
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageInputError(
            field, f"{width}x{height} is over the {MAX_IMAGE_PIXELS // (1024 * 1024)}-megapixel limit"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageInputError(
            field, f"{width}x{height} is too small: each side must be at least {MIN_IMAGE_SIDE} pixels"
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageInputError(
            field,
            f"{width}x{height} is too narrow: the long side may be at most {MAX_ASPECT_RATIO} "
            "times the short one (the output is cropped from its middle)",
        )
    if image.format in ("JPEG", "MPO") and len(data) * JPEG_PIXELS_PER_BYTE < width * height:
        # libjpeg fills a scan that ends early with flat blocks and decodes "successfully": a 635-byte
        # file would become 8000x8000 pixels of nothing, at the full memory cost.
        raise ImageInputError(field, f"the image is truncated: {len(data)} bytes cannot hold {width}x{height} pixels")
    return image


def probe_image(data: bytes, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> str:
    """For the request path (uploads): `open_image`'s header checks, then a walk through the whole
    file that holds little memory, so truncation is still refused at once. Returns the format.

    A full decode of a 255 KB PNG of 8192x8192 costs about 1 GB; instead a JPEG is decoded at 1/8
    scale (every byte of its entropy-coded data is read, 1/64 of the pixels kept), a PNG's chunks are
    read and their CRCs checked, then its pixels inflated a megabyte at a time and dropped (the stream
    must end, at the size its header gives), and WebP and GIF are decoded only up to
    FULL_PROBE_PIXELS. The worker's `decode_image` stays the full check."""
    image = open_image(data, field, max_bytes)
    with _probes:
        try:
            if image.format in ("JPEG", "MPO"):
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
                image.load()
            elif image.format == "PNG":
                image.verify()
            elif image.width * image.height <= FULL_PROBE_PIXELS:
                image.seek(0)
                image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageInputError(field, f"the image is truncated or corrupt ({exc})") from None
        if image.format == "PNG":
            _check_png_pixels(data, field)
    return image.format or ""


def decode_image(data: bytes, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """Bytes to an RGB image, or ImageInputError saying what is wrong with them."""
    image = open_image(data, field, max_bytes)
    try:
        image.seek(0)  # animations: the first frame
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageInputError(field, f"the image is truncated or corrupt ({exc})") from None
    image = ImageOps.exif_transpose(image)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, as an editor would show them, not black.
        canvas = Image.new("RGBA", image.size, (255, 255, 255, 255))
        canvas.alpha_composite(image.convert("RGBA"))
        image = canvas
    elif image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v * (1 / 256)).convert("L")  # 16-bit: keep the top 8 bits
    return image.convert("RGB")


def _check_png_pixels(data: bytes, field: str) -> None:
    """The PNG's compressed pixels inflate to a complete stream of the size its header gives, without
    holding them: chunk CRCs (`verify`) do not see a cut-off deflate stream inside a well-formed chunk."""
    stream, chunk_start, inflated = zlib.decompressobj(), 8, 0
    expected = _png_raw_size(data)
    while chunk_start + 8 <= len(data) and not stream.eof:
        length, kind = struct.unpack(">I4s", data[chunk_start : chunk_start + 8])
        if kind == b"IDAT":
            body = data[chunk_start + 8 : chunk_start + 8 + length]
            while body and not stream.eof:
                inflated += len(stream.decompress(body, PNG_INFLATE_STEP))
                body = stream.unconsumed_tail
        elif kind == b"IEND":
            break
        chunk_start += 12 + length
    if not stream.eof or (expected is not None and inflated != expected):
        raise ImageInputError(field, "the image is truncated or corrupt (its pixel data ends early)")


def _png_raw_size(data: bytes) -> int | None:
    """Bytes of a non-interlaced PNG's filtered scanlines, from its IHDR (None for interlaced ones: the
    passes of Adam7 are sized apart, and the stream's own end is then the check)."""
    width, height, depth, color, _compression, _filter, interlace = struct.unpack(">IIBBBBB", data[16:29])
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}.get(color)
    if interlace or channels is None:
        return None
    return height * (1 + (width * depth * channels + 7) // 8)


def data_uri_bytes(uri: str, field: str = "image") -> bytes:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ImageInputError(field, "data URIs must look like data:image/png;base64,...", ErrorCode.IMAGE_FETCH_FAILED)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "the data URI is not valid base64") from None


def decode_data_uri(uri: str, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    return decode_image(data_uri_bytes(uri, field), field, max_bytes)


def load_image(source: str | Path, field: str = "image", max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> Image.Image:
    """For the CLI: a local path, an http(s) URL or a data URI. (The server uses its own SSRF-safe fetch.)"""
    text = str(source)
    if text.startswith("data:"):
        return decode_data_uri(text, field, max_bytes)
    if text.startswith(("http://", "https://")):
        return decode_image(_download(text, field, max_bytes), field, max_bytes)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ImageInputError(field, f"no such file: {path}", ErrorCode.IMAGE_FETCH_FAILED)
    if path.stat().st_size > max_bytes:
        raise ImageInputError(field, _over_cap("the file", max_bytes))
    return decode_image(path.read_bytes(), field, max_bytes)


def _download(url: str, field: str, max_bytes: int) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as response:
            if response.status_code != 200:
                raise ImageInputError(
                    field, f"GET {url} answered HTTP {response.status_code}", ErrorCode.IMAGE_FETCH_FAILED
                )
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise ImageInputError(field, _over_cap("the download", max_bytes))
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageInputError(
            field, f"could not fetch {url}: {type(exc).__name__}", ErrorCode.IMAGE_FETCH_FAILED
        ) from None
