"""The invisible watermark: RivaGAN from the `invisible-watermark` package (its ONNX encoder and decoder
ship inside the wheel: nothing is downloaded), computed at a fixed working size.

The package's DWT-DCT method, which diffusers' SDXL pipelines use, did not survive JPEG at quality 75,
a resize to 50% or a 10% crop on our test images (bench/provenance.py measures it); RivaGAN survived
all three. Running it at 256x256 and adding the upsampled residual to the full image makes its cost
the same at every output size and makes a resized copy read back as the original did. A crop is met
by reading the image as it is and re-framed as the centre or a corner of a 10% larger one, keeping
the most confident read.

The payload is 32 bits with exactly 16 of them set (`new_mark_id`, about 29 bits of randomness): RivaGAN
does not carry strings of mostly equal bits (8 or fewer ones of 32 failed on our photos), and a read
that is not balanced is no mark. The store keeps each task's id (`tasks.watermark`) to look it up.
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


def new_mark_id() -> str:
    """A fresh watermark id: 8 hex digits, 16 of their 32 bits set."""
    ones = secrets.SystemRandom().sample(range(PAYLOAD_BITS), PAYLOAD_BITS // 2)
    return sum(1 << bit for bit in ones).to_bytes(PAYLOAD_BITS // 8, "big").hex()


def is_mark_id(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{8}", value)) and int(value, 16).bit_count() == PAYLOAD_BITS // 2


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
