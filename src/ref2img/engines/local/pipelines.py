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


# transformers keeps a rotary embedding's frequency table in float32 on purpose (RoPE loses precision in
# half types): a small buffer derived from the config, not weights (the Qwen3 text encoders have it).
FLOAT32_BY_DESIGN = ("rotary_emb.inv_freq", "rotary_emb.original_inv_freq")


def module_dtype(module: torch.nn.Module) -> str:
    tensors = [*module.named_parameters(), *module.named_buffers()]
    found = sorted(
        {dtype_name(t.dtype) for name, t in tensors if t.is_floating_point() and not name.endswith(FLOAT32_BY_DESIGN)}
    )
    return "+".join(found) or "none"
