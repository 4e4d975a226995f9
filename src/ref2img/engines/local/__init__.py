"""The local diffusers engine. Importing this package imports torch and diffusers."""

from ref2img.engines.local.engine import LocalEngine
from ref2img.engines.local.presets import PRESETS, ModelRef, Preset, resolve_preset
from ref2img.engines.local.speed import Speedups

__all__ = ["PRESETS", "LocalEngine", "ModelRef", "Preset", "Speedups", "resolve_preset"]
