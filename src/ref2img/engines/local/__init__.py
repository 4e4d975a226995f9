"""The local diffusers engine.

`LocalEngine` and `Speedups` import torch and diffusers, on first use: the presets and the hub code
(`ref2img.engines.local.presets`, `.hub`) import without them, so that the CLI can check a model name
at once, before torch loads.
"""

from ref2img.engines.local.options import LocalOptions
from ref2img.engines.local.presets import PRESETS, ModelRef, Preset, resolve_preset

__all__ = ["PRESETS", "LocalEngine", "LocalOptions", "ModelRef", "Preset", "Speedups", "resolve_preset"]


def __getattr__(name: str):
    if name == "LocalEngine":
        from ref2img.engines.local.engine import LocalEngine

        return LocalEngine
    if name == "Speedups":
        from ref2img.engines.local.speed import Speedups

        return Speedups
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
