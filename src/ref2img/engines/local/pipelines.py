"""The loaded model of a preset, whatever its family: `load_pipelines` asks the preset's family plug-in
(families/) to load it, and reads back what is loaded, family-agnostic."""

from __future__ import annotations

import torch

from ref2img.engines.local.device import Placement, dtype_name
from ref2img.engines.local.families import FamilyPipelines, family_named
from ref2img.engines.local.presets import Preset
from ref2img.engines.local.speed import Speedups


def load_pipelines(
    preset: Preset, placement: Placement, speedups: Speedups | None = None, offload_mode: str = "none"
) -> FamilyPipelines:
    return family_named(preset.family).load(preset, placement, speedups or Speedups(), offload_mode)


def component_dtypes(pipelines: FamilyPipelines) -> dict[str, str]:
    """name → the dtype its floating-point weights are in ("bfloat16", or e.g. "bfloat16+float32")."""
    return {name: module_dtype(module) for name, module in pipelines.modules().items()}


def module_dtype(module: torch.nn.Module) -> str:
    found = sorted({dtype_name(t.dtype) for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()})
    return "+".join(found) or "none"
