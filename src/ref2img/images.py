"""Reading input images safely: from bytes, a local path, an http(s) URL or a `data:` URI.

Decoding refuses anything that is not a JPEG, PNG or WebP, images over the pixel cap (a
decompression-bomb guard that Pillow checks from the header, before decoding), and truncated files.
It honours EXIF orientation and takes the first frame of animations.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from ref2img.protocol import ErrorCode

ALLOWED_FORMATS = {"JPEG", "PNG", "WEBP", "MPO"}  # MPO: the multi-picture JPEGs phones write
MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
FETCH_TIMEOUT_S = 20.0


class ImageInputError(ValueError):
    """An input image could not be fetched (680002) or is not a usable image (680003)."""

    def __init__(self, field: str, message: str, code: ErrorCode = ErrorCode.IMAGE_INVALID):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.code = code


def decode_image(data: bytes, field: str = "image") -> Image.Image:
    """Bytes to an RGB image, or ImageInputError saying what is wrong with them."""
    if not data:
        raise ImageInputError(field, "the file is empty (0 bytes)")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageInputError(field, f"the file is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise ImageInputError(field, f"{image.format or 'this'} images are not accepted; use JPEG, PNG or WebP")
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise ImageInputError(
                    field, f"{image.width}x{image.height} is over the {MAX_IMAGE_PIXELS // (1024 * 1024)}-megapixel limit")
            image.seek(0)  # animations: the first frame
            image.load()
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(field, "the data is not an image Pillow can read (JPEG, PNG or WebP expected)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses from the header alone, before allocating anything.
        raise ImageInputError(field, f"the image is over the {MAX_IMAGE_PIXELS // (1024 * 1024)}-megapixel limit") from None
    except (OSError, SyntaxError, ValueError) as exc:
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


def decode_data_uri(uri: str, field: str = "image") -> Image.Image:
    header, _, payload = uri.partition(",")
    if not header.startswith("data:image/") or ";base64" not in header:
        raise ImageInputError(field, "data URIs must look like data:image/png;base64,...", ErrorCode.IMAGE_FETCH_FAILED)
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "the data URI is not valid base64") from None
    return decode_image(data, field)


def load_image(source: str | Path, field: str = "image") -> Image.Image:
    """For the CLI: a local path, an http(s) URL or a data URI. (The server uses its own SSRF-safe fetch.)"""
    text = str(source)
    if text.startswith("data:"):
        return decode_data_uri(text, field)
    if text.startswith(("http://", "https://")):
        return decode_image(_download(text, field), field)
    path = Path(text).expanduser()
    if not path.is_file():
        raise ImageInputError(field, f"no such file: {path}", ErrorCode.IMAGE_FETCH_FAILED)
    if path.stat().st_size > MAX_IMAGE_BYTES:
        raise ImageInputError(field, f"the file is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
    return decode_image(path.read_bytes(), field)


def _download(url: str, field: str) -> bytes:
    import httpx

    try:
        with httpx.stream("GET", url, timeout=FETCH_TIMEOUT_S, follow_redirects=True) as response:
            if response.status_code != 200:
                raise ImageInputError(field, f"GET {url} answered HTTP {response.status_code}",
                                      ErrorCode.IMAGE_FETCH_FAILED)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_IMAGE_BYTES:
                    raise ImageInputError(field, f"the download is over {MAX_IMAGE_BYTES // (1024 * 1024)} MB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise ImageInputError(field, f"could not fetch {url}: {type(exc).__name__}", ErrorCode.IMAGE_FETCH_FAILED) from None
