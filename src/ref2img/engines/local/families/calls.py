"""What every family's call shares: one generator a batch image (image i uses seed + i, so any one
image can be made again alone), the models a pipeline holds, the one knob every family can lack, and the levers a family may not have."""

from __future__ import annotations

from typing import Any

import torch

from ref2img.engines.base import Job
from ref2img.engines.local.speed import Speedups


def image_generators(job: Job) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(job.seed + i) for i in range(job.batch_size)]


def torch_modules(pipe: Any) -> dict[str, torch.nn.Module]:
    """A diffusers pipeline's components that are models (not its tokenizer or scheduler)."""
    return {name: module for name, module in pipe.components.items() if isinstance(module, torch.nn.Module)}


def ignored_without_cfg(job: Job, guidance: float) -> list[str]:
    """A negative prompt has no effect at guidance ≤ 1 (no classifier-free guidance): say so."""
    return [f"negative_prompt (guidance {guidance:g}: no CFG)"] if job.negative_prompt and guidance <= 1 else []


def unapplied_approximations(speedups: Speedups, applied: frozenset[str] = frozenset()) -> list[str]:
    """Each output-changing lever asked for that this family (or this mode) does not apply, as the run
    record says it."""
    return [f"{name} (not for this model family)" for name in sorted(speedups.approximate - applied)]
