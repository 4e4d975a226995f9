"""How a local engine is asked for, and the one place it is built (`ref2img serve`/`worker`,
`ref2img generate` and `ref2img mcp` all go through `LocalOptions.build`). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from ref2img.engines.local.engine import LocalEngine
    from ref2img.engines.local.presets import Preset


@dataclass(frozen=True)
class LocalOptions:
    model: str | Preset = "sdxl"  # a preset name, a local path, or a resolved Preset
    device: str | None = None
    dtype: str | None = None  # float32 | float16 | bfloat16; default per device
    offload: str = "none"  # none | model | sequential | auto
    compile: str = "none"  # none | regional | full
    overrides: dict[str, str] = field(default_factory=dict)  # --part KEY=VALUE
    compile_cache: str | None = None

    def build(self) -> LocalEngine:
        """The engine, not loaded yet (`.load()` reads the weights). EngineOptionError for a setting this
        machine cannot use, at once."""
        from ref2img.engines.local.engine import LocalEngine
        from ref2img.engines.local.speed import CompileKind, Speedups

        return LocalEngine(
            self.model,
            device=self.device,
            overrides=self.overrides or None,
            dtype=self.dtype,
            offload=self.offload,
            speedups=Speedups(compile=cast(CompileKind, self.compile)),  # Speedups checks the word
            compile_cache=self.compile_cache,
        )
