"""Pre-processing on the device (`Speedups.preprocess_on_device`, exact): a control map or an init image
crosses to the device as its 8-bit pixels, and the scaling to [0, 1] happens there, so a quarter of the
bytes cross and the host does no float work for it. diffusers' image processors take a [0, 1] tensor
and go on as with a PIL image (normalising to [-1, 1] where they do).

Exact: diffusers' PIL path divides the same 8-bit values by 255 in float32 (`pil_to_numpy`), and a
division is rounded alike in numpy and torch. Only images already at the model's size are handed over:
a resize would be torch's, not PIL's, and change pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from ref2img.engines.local.speed import Speedups


def call_pixels(images: Any, size: tuple[int, int], speedups: Speedups, device: torch.device) -> Any:
    """What a pipeline call is handed for `images`: device tensors under the lever, else them as they are."""
    return device_pixels(images, size, device) if speedups.preprocess_on_device else images


def device_pixels(images: Any, size: tuple[int, int], device: torch.device) -> Any:
    """`images` (one PIL image or a list of them) as (1, 3, H, W) float32 tensors on `device`; what is
    not an RGB-convertible image at `size`, or a list holding one, is handed back as it is."""
    if isinstance(images, list):
        converted = [device_pixels(image, size, device) for image in images]
        return converted if all(isinstance(item, torch.Tensor) for item in converted) else images
    if not isinstance(images, Image.Image) or images.size != size:
        return images
    pixels = torch.from_numpy(np.array(images.convert("RGB"))).to(device)
    # (N, C, H, W) as a view of (N, H, W, C), the very strides of diffusers' `numpy_to_pt`: another layout
    # would pick other convolution kernels in the VAE encoder, and other rounding
    return pixels.unsqueeze(0).permute(0, 3, 1, 2).to(torch.float32) / 255.0
