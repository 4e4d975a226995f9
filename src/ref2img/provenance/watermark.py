"""The invisible watermark: RivaGAN from the `invisible-watermark` package (its ONNX encoder and decoder
ship inside the wheel: nothing is downloaded), computed at a fixed working size.

The package's DWT-DCT method, which diffusers' SDXL pipelines use, did not survive JPEG at quality 75,
a resize to 50% or a 10% crop on our test images (bench/provenance.py measures it); RivaGAN survived
all three. Running it at 256x256 and adding the upsampled residual to the full image makes its cost
the same at every output size and makes a resized copy read back as the original did. A crop is met
by reading the image as it is and re-framed as the centre or a corner of a 10% larger one, keeping
the most confident read.

The payload is 32 bits: a 24-bit random id and its 8-bit checksum (CRC-8), whitened by a fixed mask, and
only words with exactly 16 bits set are used (`new_mark_id`: about 4.7 million ids). RivaGAN does not carry
strings of mostly equal bits (8 or fewer ones of 32 failed on our photos). A read is a mark only when it
is balanced *and* its checksum holds: RivaGAN reads unmarked images, noise above all, as confidently as
marked ones, so without the checksum about one read in seven of an unmarked image named an id (a
balanced word); with it, a random word passes one time in about 900 (bench/provenance.py --unmarked
measures reads of real unmarked images). The store keeps
each task's id (`tasks.watermark`) to look it up.
"""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

WORK_SIZE = 256  # the side RivaGAN runs at (its training frames were 256x256)
PAYLOAD_BITS = 32  # what the package's RivaGAN carries
# Mean |logit| of the 32 bits read back: marked images read 8-18 on our test set, unmarked ones 1-3.
DETECTION_CONFIDENCE = 5.0
_CROP_FRAMES = ((0.5, 0.5), (0.0, 0.0), (1.0, 1.0), (0.0, 1.0), (1.0, 0.0))  # where a 10% crop may sit
_lock = threading.Lock()


ID_BITS = 24  # the random part; the other 8 bits check it
WHITENING = 0x5A3C96E1  # XOR-ed over id+checksum, so that ids of every kind land near 16 bits set


def _crc8(value: int) -> int:
    """CRC-8 (polynomial 0x07) of the id's 3 bytes."""
    crc = 0
    for byte in value.to_bytes(ID_BITS // 8, "big"):
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _word(random_id: int) -> int:
    return ((random_id << 8) | _crc8(random_id)) ^ WHITENING


def mark_id_from(random_id: int) -> str | None:
    """The watermark id a 24-bit draw makes (8 hex digits, 16 of their 32 bits set, the last 8 checking
    the first 24 after the whitening mask), or None when that word is not balanced."""
    word = _word(random_id)
    return word.to_bytes(PAYLOAD_BITS // 8, "big").hex() if word.bit_count() == PAYLOAD_BITS // 2 else None


def new_mark_id() -> str:
    """A fresh watermark id (`mark_id_from` a random draw). Drawn until balanced: about one draw in four is."""
    draw = secrets.SystemRandom()
    while (mark := mark_id_from(draw.getrandbits(ID_BITS))) is None:
        pass
    return mark


def is_mark_id(value: str) -> bool:
    """A word `new_mark_id` could have made: balanced, and its checksum holds."""
    if not re.fullmatch(r"[0-9a-f]{8}", value):
        return False
    word = int(value, 16)
    return word.bit_count() == PAYLOAD_BITS // 2 and _word((word ^ WHITENING) >> 8) == word


@dataclass(frozen=True)
class Detection:
    mark_id: str | None  # None: no watermark found
    confidence: float  # mean |logit| of the bits read


def _models():
    from imwatermark.rivaGan import RivaWatermark

    with _lock:
        RivaWatermark.loadModel()  # the ONNX sessions, once a process
    return RivaWatermark


def embed(image: Image.Image, mark: str) -> Image.Image:
    """`image` with `mark` (8 hex digits) hidden in its pixels (PSNR about 40 dB)."""
    import cv2

    riva = _models()
    bits = list(np.unpackbits(np.frombuffer(bytes.fromhex(mark), np.uint8)))
    rgb = image.convert("RGB")
    small = np.asarray(rgb.resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BICUBIC))[:, :, ::-1]  # BGR
    marked = riva(bits, PAYLOAD_BITS).encode(np.ascontiguousarray(small)).astype(np.float32)
    residual = cv2.resize(marked - small.astype(np.float32), rgb.size, interpolation=cv2.INTER_CUBIC)
    full = np.asarray(rgb, dtype=np.float32) + residual[:, :, ::-1]
    return Image.fromarray(np.clip(np.rint(full), 0, 255).astype(np.uint8))


def _logits(image: Image.Image) -> np.ndarray:
    riva = _models()
    small = np.asarray(image.convert("RGB").resize((WORK_SIZE, WORK_SIZE), Image.Resampling.BICUBIC))[:, :, ::-1]
    frame = (small.astype(np.float32)[None] / 127.5 - 1.0).transpose(3, 0, 1, 2)[None]
    return riva.decoder.run(None, {"frame": frame})[0][0]


def _reframed(image: Image.Image):
    """The image as it is, then as each place a 10% crop of a larger one could have come from."""
    import cv2

    yield image
    rgb = np.asarray(image.convert("RGB"))
    height, width = rgb.shape[:2]
    pad_w, pad_h = int(width / 0.9) - width, int(height / 0.9) - height
    for fx, fy in _CROP_FRAMES:
        left, top = int(pad_w * fx), int(pad_h * fy)
        framed = cv2.copyMakeBorder(rgb, top, pad_h - top, left, pad_w - left, cv2.BORDER_REFLECT)
        yield Image.fromarray(framed)


def detect(image: Image.Image) -> Detection:
    """The watermark's id: the image as it is when that reads as a mark, else the most confident of the
    re-framings (a crop) that reads as one; None when none does (its confidence: the best seen)."""
    best_id, best_confidence, seen = None, 0.0, 0.0
    for framed in _reframed(image):
        logits = _logits(framed)
        confidence = float(np.abs(logits).mean())
        seen = max(seen, confidence)
        read = np.packbits((logits > 0).astype(np.uint8)).tobytes().hex()
        if confidence >= DETECTION_CONFIDENCE and is_mark_id(read) and confidence > best_confidence:
            best_id, best_confidence = read, confidence
            if framed is image:
                break  # read as it is: not a crop
    return Detection(best_id, best_confidence if best_id else seen)
