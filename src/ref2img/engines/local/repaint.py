"""Image Repaint's masks: what the model is given, and how its output is laid over the original.

The model gets the mask as black and white (white = redraw). Its output is then composed over the
original through a soft copy of the mask whose feather lies *inside* the white area: the mask is eroded
by the feather's width, blurred by as much, and cut to the white area, so the seam is soft and every pixel
where the mask is black comes back exactly as it was.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

FEATHER = 0.02  # the soft edge's width, as a share of the image's short side
MASK_THRESHOLD = 127  # a grey mask pixel above this is redrawn


def redraw_area(mask: Image.Image | None, size: tuple[int, int]) -> np.ndarray:
    """Where the image is redrawn, as booleans at `size` (width, height); no mask: everywhere."""
    if mask is None:
        return np.ones((size[1], size[0]), dtype=bool)
    gray = np.asarray(mask.convert("L").resize(size, Image.Resampling.NEAREST))
    return gray > MASK_THRESHOLD


def model_mask(area: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """The mask the pipeline is given, at the model's size."""
    return Image.fromarray(area.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)


def soft_mask(area: np.ndarray) -> np.ndarray:
    """Weights 0..1 of the generated image: 1 deep inside the area, feathered at its edge, 0 outside."""
    radius = max(1, round(min(area.shape) * FEATHER))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    inner = cv2.erode(area.astype(np.uint8) * 255, kernel)
    soft = cv2.GaussianBlur(inner.astype(np.float32) / 255.0, (0, 0), sigmaX=radius / 2)
    return np.where(area, soft, 0.0)


def compose(original: Image.Image, generated: Image.Image, area: np.ndarray) -> Image.Image:
    """`generated` laid over `original` inside the area; outside it, `original`'s own pixels."""
    resized = generated.convert("RGB").resize(original.size, Image.Resampling.LANCZOS)
    if area.all():
        return resized
    base = np.asarray(original.convert("RGB"), dtype=np.float32)
    new = np.asarray(resized, dtype=np.float32)
    weight = soft_mask(area)[..., None]
    blended = (base * (1.0 - weight) + new * weight).round().clip(0, 255).astype(np.uint8)
    kept = np.asarray(original.convert("RGB"))
    return Image.fromarray(np.where(weight > 0, blended, kept))
