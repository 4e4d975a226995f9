"""LoRAs a request may name (`loras`): only the `.safetensors` files in the operator's folders
(`--lora-dir`), by their file name without the suffix; never a path or a URL from the request.

In a UNet family they are loaded into the UNet once (PEFT adapters, kept for the next request), set to
the request's weights for its call, and disabled after it: a disabled adapter returns its base layer's
output as it is, so the same request without LoRAs gives the same pixels as before any was loaded. Only
the UNet's part of a file is read (a text-encoder part would go stale in the prompt cache).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ref2img.engines.base import EngineOptionError

log = logging.getLogger("ref2img.engine")


def find_loras(folders: Sequence[str | Path]) -> dict[str, Path]:
    """Name -> file of every LoRA in `folders` (the first folder wins a name). A symlink that leads out of
    its folder is left out, as the MCP server's allowed folders do."""
    found: dict[str, Path] = {}
    for folder in folders:
        root = Path(folder).resolve()
        if not root.is_dir():
            continue
        for path in sorted(root.glob("*.safetensors")):
            real = path.resolve()
            if real.parent == root and real.is_file():
                found.setdefault(path.stem, real)
    return found


def resolve_loras(requested: Sequence[Any], folders: Sequence[str | Path]) -> list[tuple[str, Path, float]]:
    """(name, file, weight) of each LoRA a request names; EngineOptionError naming an unknown one."""
    if not requested:
        return []
    available = find_loras(folders)
    resolved = []
    for index, lora in enumerate(requested):
        if lora.name not in available:
            offered = ", ".join(sorted(available)) or "none (no --lora-dir)"
            raise EngineOptionError(
                f"loras[{index}].name: {lora.name!r} is not a LoRA of this server; it has {offered}"
            )
        resolved.append((lora.name, available[lora.name], lora.weight))
    return resolved


class UnetLoras:
    """The LoRA adapters of one pipeline's UNet: loaded on first use, active for one call at a time."""

    def __init__(self, pipe: Any):
        self._pipe = pipe
        self._loaded: dict[str, Path] = {}

    @contextlib.contextmanager
    def active(self, loras: list[tuple[str, Path, float]]) -> Iterator[None]:
        if not loras:
            yield
            return
        for name, path, _ in loras:
            self._load(name, path)
        unet = self._pipe.unet
        unet.set_adapters([name for name, _, _ in loras], weights=[weight for _, _, weight in loras])
        unet.enable_lora()
        try:
            yield
        finally:
            unet.disable_lora()  # the next request runs on the UNet as it was

    def _load(self, name: str, path: Path) -> None:
        if self._loaded.get(name) == path:
            return
        if name in self._loaded:  # the file changed under the same name: load it anew
            self._pipe.unet.delete_adapters([name])
        state, alphas = self._pipe.lora_state_dict(str(path))
        unet_state = {key: value for key, value in state.items() if key.startswith("unet.")}
        if not unet_state:
            raise EngineOptionError(f"loras: {name!r} holds no UNet weights this model can take")
        self._pipe.load_lora_into_unet(unet_state, alphas, unet=self._pipe.unet, adapter_name=name)
        self._loaded[name] = path
        log.info("loaded lora %s from %s", name, path)
