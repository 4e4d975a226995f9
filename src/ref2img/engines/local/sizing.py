"""Output sizes: generate at a size the model handles, hand back exactly what was asked for."""

from __future__ import annotations

import math

from PIL import Image, ImageOps


def generation_size(width: int, height: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """The size to run the model at: the requested aspect, area capped at `max_pixels`,
    each side a multiple of `multiple` (the UNet's downsampling needs it)."""
    scale = min(1.0, math.sqrt(max_pixels / (width * height)))

    def snap(side: float) -> int:
        return max(multiple, round(side * scale / multiple) * multiple)

    return snap(width), snap(height)


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover `width`×`height`, then centre-crop: no distortion, exact size."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
