"""How a local engine is asked for, and the one place it is built (`ref2img serve`/`worker`,
`ref2img generate` and `ref2img mcp` all go through `LocalOptions.build`). Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from ref2img.engines.local.presets import DEFAULT_PRESET

if TYPE_CHECKING:
    from ref2img.engines.local.engine import LocalEngine
    from ref2img.engines.local.presets import Preset


@dataclass(frozen=True)
class LocalOptions:
    model: str | Preset = DEFAULT_PRESET  # a preset name, a local path, or a resolved Preset
    device: str | None = None
    dtype: str | None = None  # float32 | float16 | bfloat16; default per device
    offload: str = "none"  # none | model | sequential | auto
    compile: str = "none"  # none | regional | full
    compile_after: int = 1  # calls of a shape before one compiles for it
    approximate: str = ""  # output-changing levers, comma-separated (speed.APPROXIMATIONS); none by default
    overrides: dict[str, str] = field(default_factory=dict)  # --part KEY=VALUE
    compile_cache: str | None = None
    lora_dirs: tuple[str, ...] = ()  # --lora-dir: the folders a request's `loras` are read from

    def build(self) -> LocalEngine:
        """The engine, not loaded yet (`.load()` reads the weights). EngineOptionError for a setting this
        machine cannot use, at once."""
        from ref2img.engines.local.engine import LocalEngine
        from ref2img.engines.local.speed import CompileKind, Speedups, parse_approximations

        return LocalEngine(
            self.model,
            device=self.device,
            overrides=self.overrides or None,
            dtype=self.dtype,
            offload=self.offload,
            # Speedups checks the words
            speedups=Speedups(
                compile=cast(CompileKind, self.compile),
                compile_after=self.compile_after,
                approximate=parse_approximations(self.approximate),
            ),
            compile_cache=self.compile_cache,
            lora_dirs=self.lora_dirs,
        )
