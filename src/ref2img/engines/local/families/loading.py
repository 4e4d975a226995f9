"""Loading one model part of a preset, alike for every family: the one log line per part that an
operator sees, and a missing or half-downloaded part turned into a message naming it and the command
that fetches it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ref2img.engines.base import ModelMissingError
from ref2img.engines.local.hub import folder_of, locate
from ref2img.engines.local.presets import ModelRef, Preset

log = logging.getLogger("ref2img.engine")

# What a missing or half-downloaded model raises from `from_pretrained` / `from_single_file`.
LOAD_ERRORS = (OSError, ValueError, KeyError)


def load_part(preset: Preset, part: str, ref: ModelRef, loader: Callable[[Path], Any], dtype_name: str) -> Any:
    """`loader(path)` on the part's folder, or on its one file when the part names a `weight_name`."""
    path = locate(ref, part, preset) if ref.weight_name else folder_of(ref, part, preset)
    started = time.perf_counter()
    try:
        loaded = loader(path)
    except LOAD_ERRORS as exc:
        raise ModelMissingError(
            f"The {part} model of preset {preset.name!r} at {path} could not be loaded "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            f"fetch it again with `ref2img models pull {preset.pull_target}`."
        ) from None
    log.info("loaded %s from %s in %.1f s (%s)", part, ref.source, time.perf_counter() - started, dtype_name)
    return loaded
