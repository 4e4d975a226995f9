"""Post-processing on the device (`Speedups.decode_on_device`, exact): the pipeline hands back its
decoded images as a float tensor in [0, 1] (`output_type="pt"`), and the 8-bit rounding happens where
they are, so one uint8 copy crosses to the host instead of four times as many float32 bytes.

Exact: diffusers' own PIL path does the same float32 arithmetic, `(x * 255).round()` (round half to
even in numpy and in torch alike), after moving the tensor to the host.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def output_kwargs(decode_on_device: bool) -> dict[str, Any]:
    return {"output_type": "pt"} if decode_on_device else {}


def to_pil(images: Any) -> list[Image.Image]:
    """The pipeline's `.images`: PIL images as they are, or a (batch, 3, H, W) tensor in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        return list(images)
    levels = (images.float() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(image) for image in levels]
