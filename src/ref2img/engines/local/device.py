"""Choosing where the engine runs: CUDA (bf16, else fp16) > MPS (fp16) > CPU (fp32), each overridable."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from ref2img.engines.base import EngineOptionError

log = logging.getLogger("ref2img.engine")

# The names `--dtype` takes, and what they mean.
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype

    @property
    def is_cpu(self) -> bool:
        return self.device.type == "cpu"

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(value: str | torch.dtype | None) -> torch.dtype | None:
    """`"bfloat16"` → torch.bfloat16; None stays None (the device's default). Bad names name the choices."""
    if value is None or isinstance(value, torch.dtype):
        return value
    try:
        return DTYPES[value.strip().lower().removeprefix("torch.")]
    except KeyError:
        raise EngineOptionError(f"--dtype: must be one of {', '.join(DTYPES)} (got {value!r})") from None


def choose_placement(requested: str | None = None, dtype: str | torch.dtype | None = None) -> Placement:
    """`requested` ("cuda", "cuda:1", "mps", "cpu") wins; otherwise the fastest device present.
    `dtype` wins over the device's default (bf16 on CUDA that supports it, fp16 on MPS, fp32 on CPU)."""
    chosen_dtype = parse_dtype(dtype)
    if requested:
        device = torch.device(requested)
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = torch.device("mps")
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        default = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device.type == "mps":
        default = torch.float16
    else:
        default = torch.float32  # half precision on CPU is slow for these ops: only on request
    placement = Placement(device, chosen_dtype or default)
    log.info("engine device=%s dtype=%s", device, placement.dtype_name)
    return placement
