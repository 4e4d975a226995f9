"""Step previews: the current latents as a small RGB image, without running the VAE.

A linear projection of the 4 latent channels onto RGB, the factors fitted for each family's VAE
(from ComfyUI's `comfy/latent_formats.py`, the same ones its previews use). It costs a 4x3 matrix
product on the 1/8-size latent: nothing beside a denoising step.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

LATENT_RGB = {
    "sd15": (
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    "sdxl": (
        (0.3920, 0.4054, 0.4549),
        (-0.2634, -0.0196, 0.0653),
        (0.0568, 0.1687, -0.0755),
        (-0.3112, -0.2359, -0.2076),
    ),
}


def latent_preview(latents: torch.Tensor, family: str) -> Image.Image:
    """The first latent of a batch (4 x h x w) as an RGB image of w x h pixels (1/8 of the output)."""
    factors = torch.tensor(LATENT_RGB[family], dtype=torch.float32)
    latent = latents[0].detach().float().cpu()  # (4, h, w)
    rgb = torch.einsum("chw,cr->hwr", latent, factors)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
