"""Step previews: the current latents as a small RGB image, without running the VAE.

A linear projection of the latent channels onto RGB, with factors fitted for each family's VAE (each
family module holds its own; SD1.5's and SDXL's are ComfyUI's, from `comfy/latent_formats.py`, the same
ones its previews use). It costs a channels×3 matrix product on the small latent: nothing beside a
denoising step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

LatentFactors = Sequence[Sequence[float]]  # one (r, g, b) row per latent channel


def latent_preview(latents: torch.Tensor, factors: LatentFactors) -> Image.Image:
    """The first latent of a batch (channels x h x w) as an RGB image of w x h pixels."""
    matrix = torch.tensor(factors, dtype=torch.float32)
    latent = latents[0].detach().float().cpu()  # (channels, h, w)
    if latent.shape[0] != matrix.shape[0]:
        raise ValueError(f"the preview factors are for {matrix.shape[0]} latent channels, not {latent.shape[0]}")
    rgb = torch.einsum("chw,cr->hwr", latent, matrix)
    pixels = ((rgb + 1.0) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
