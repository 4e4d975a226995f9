"""Choosing where the engine runs: CUDA (bf16, else fp16) > MPS (fp16) > CPU (fp32)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger("ref2img.engine")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"


def choose_placement(requested: str | None = None) -> Placement:
    """`requested` ("cuda", "cuda:1", "mps", "cpu") wins; otherwise the fastest device present."""
    if requested:
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "mps":
        dtype = torch.float16
    else:
        dtype = torch.float32  # half precision on CPU is slow or unsupported for these ops
    log.info("engine device=%s dtype=%s", device, str(dtype).removeprefix("torch."))
    return Placement(device, dtype)
