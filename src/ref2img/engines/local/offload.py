"""Small GPUs: diffusers' CPU offload, chosen by hand or (`auto`) from the GPU memory free at load.

- `model`: each whole model (text encoders, UNet, ControlNet, VAE) moves to the GPU when it runs and
  back when the next one starts: the GPU holds the UNet + ControlNet at most, at a small cost in speed.
- `sequential`: weights stream to the GPU layer by layer: the least memory, and slow.
"""

from __future__ import annotations

import logging

import torch

from ref2img.engines.base import EngineOptionError
from ref2img.engines.local.device import Placement

OFFLOAD_MODES: tuple[str, ...] = ("none", "model", "sequential", "auto")
# Activations, attention and VAE decode at 1024² on top of the weights (bf16 SDXL + union ControlNet
# measured 11.5 GiB peak with 9.4 GiB of weights on an H200), with room for a batch of 4.
ACTIVATION_HEADROOM_BYTES = 3 * 2**30
log = logging.getLogger("ref2img.engine")


def parse_offload(value: str, placement: Placement) -> str:
    """Check the mode, and that the engine's device can offload to the CPU at all."""
    if value not in OFFLOAD_MODES:
        raise EngineOptionError(f"--offload: must be one of {', '.join(OFFLOAD_MODES)} (got {value!r})")
    if value in ("model", "sequential") and not _on_gpu(placement):
        raise EngineOptionError(
            f"--offload {value}: offloading moves weights between the CPU and a GPU, "
            f"but the engine runs on {placement.device.type}; use --offload none or auto"
        )
    return value


def _on_gpu(placement: Placement) -> bool:
    return placement.device.type in ("cuda", "xpu")


def choose_offload(
    requested: str, placement: Placement, all_weights: int, denoiser_weights: int, free: int | None = None
) -> str:
    """The offload mode to use. `all_weights`: every model's bytes; `denoiser_weights`: what must sit
    on the GPU together during the steps (UNet + the largest ControlNet). `free`: GPU bytes available
    (default: read from the device)."""
    requested = parse_offload(requested, placement)
    if requested != "auto":
        return requested
    if not _on_gpu(placement):
        return "none"
    free = available_gpu_bytes(placement.device) if free is None else free
    if free >= all_weights + ACTIVATION_HEADROOM_BYTES:
        mode = "none"
    else:
        mode = "model" if free >= denoiser_weights + ACTIVATION_HEADROOM_BYTES else "sequential"
    # What a 16 GiB or a 24 GiB card gets, and why: the operator reads it at start.
    log.info(
        "offload auto: %s (%.1f GiB free on %s; every model %.1f GiB, the denoiser %.1f GiB, %.0f GiB kept for "
        "activations)",
        mode,
        free / 2**30,
        placement.device,
        all_weights / 2**30,
        denoiser_weights / 2**30,
        ACTIVATION_HEADROOM_BYTES / 2**30,
    )
    return mode


def device_index(device: torch.device) -> int:
    """`device`'s index, the current device's for a bare "cuda": torch's per-process memory-fraction
    calls refuse a device without one (found on an H200; no CPU test can see it)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def cap_process_memory(device: torch.device, gib: float) -> None:
    """Let this process use at most `gib` of the GPU (`set_per_process_memory_fraction`), as a smaller
    card would: the benches' small-GPU figures, and what `available_gpu_bytes` then reports."""
    index = device_index(device)
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), index)


def available_gpu_bytes(device: torch.device) -> int:
    """Free memory on the device, within this process's cap (`set_per_process_memory_fraction`) if set."""
    index = device_index(device)
    free, total = torch.cuda.mem_get_info(index)
    fraction = (
        torch.cuda.get_per_process_memory_fraction(index)
        if hasattr(torch.cuda, "get_per_process_memory_fraction")
        else 1.0
    )
    return int(min(free, fraction * total - torch.cuda.memory_reserved(index)))


def module_bytes(*modules: torch.nn.Module | None) -> int:
    return sum(t.numel() * t.element_size() for m in modules if m is not None for t in (*m.parameters(), *m.buffers()))


def enable(pipe, mode: str, device: torch.device) -> None:
    """Install the offload hooks on `pipe`'s modules (they are shared with the other pipelines, so the
    hooks follow whichever pipeline installed them last)."""
    if mode == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif mode == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
