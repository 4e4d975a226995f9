"""LoRAs a request may name (`loras`): only the `.safetensors` files in the operator's folders
(`--lora-dir`), by their file name without the suffix; never a path or a URL from the request.

In a UNet family they are loaded into the UNet once (PEFT adapters, kept for the next request), set to
the request's weights for its call, and disabled after it: a disabled adapter returns its base layer's
output as it is, so the same request without LoRAs gives the same pixels as before any was loaded. Only
the UNet's part of a file is read (a text-encoder part would go stale in the prompt cache).

With `--compile`, a new adapter or a changed weight would recompile the blocks: there, a request's LoRA is
hot-swapped into one adapter slot instead (diffusers' `enable_lora_hotswap`, PEFT's in-place swap, ranks
padded to the largest of the operator's folders) and its weight written into the slot's scaling tensors
in place. The compiled blocks then trace twice in all (with the slot on, and off), never again per LoRA
or per weight. One LoRA a request there; one whose layers the slot lacks is refused by name.
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


HOT_SLOT = "ref2img-hot"  # the adapter a compiled UNet's LoRAs are hot-swapped into


def lora_rank(path: Path) -> int:
    """The largest rank of a LoRA file's down (A) matrices, read from its header."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as file:
        shapes = [
            file.get_slice(key).get_shape()
            for key in file.keys()  # noqa: SIM118 - a safetensors file is no mapping: keys() is its API
            if key.endswith(("lora_A.weight", "lora_down.weight"))
        ]
    return max((shape[0] for shape in shapes), default=1)


class UnetLoras:
    """The LoRA adapters of one pipeline's UNet: loaded on first use, active for one call at a time.
    `hotswap`: the UNet is compiled; LoRAs go through one hot-swapped slot (module docstring)."""

    def __init__(self, pipe: Any, hotswap: bool = False):
        self._pipe = pipe
        self._loaded: dict[str, Path] = {}
        self.hotswap = hotswap
        self._hot: Path | None = None  # the file the slot holds
        self._unit_scales: list[tuple[Any, float]] = []  # (a layer's scaling tensor, its value at weight 1)

    @contextlib.contextmanager
    def active(self, loras: list[tuple[str, Path, float]], catalog: Sequence[Path] = ()) -> Iterator[None]:
        """The request's LoRAs on for the block. `catalog`: every LoRA the operator's folders hold (the
        hot slot's rank must fit the largest)."""
        if not loras:
            yield
            return
        if self.hotswap:
            with self._hot_active(loras, catalog):
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
        state, alphas = self._unet_state(name, path)
        self._pipe.load_lora_into_unet(state, alphas, unet=self._pipe.unet, adapter_name=name)
        self._loaded[name] = path
        log.info("loaded lora %s from %s", name, path)

    def _unet_state(self, name: str, path: Path) -> tuple[dict[str, Any], Any]:
        state, alphas = self._pipe.lora_state_dict(str(path))
        unet_state = {key: value for key, value in state.items() if key.startswith("unet.")}
        if not unet_state:
            raise EngineOptionError(f"loras: {name!r} holds no UNet weights this model can take")
        return unet_state, alphas

    # -- a compiled UNet: one hot-swapped slot ------------------------------------------------------
    @contextlib.contextmanager
    def _hot_active(self, loras: list[tuple[str, Path, float]], catalog: Sequence[Path]) -> Iterator[None]:
        if len(loras) > 1:
            raise EngineOptionError(
                f"loras: with --compile, a request takes one LoRA (hot-swapped into the compiled UNet, which "
                f"never recompiles for it); this one names {len(loras)}"
            )
        [(name, path, weight)] = loras
        self._swap_in(name, path, catalog)
        for scaling, unit in self._unit_scales:
            scaling.fill_(unit * weight)  # in place: a new float would be a new guard, and a recompile
        unet = self._pipe.unet
        unet.enable_lora()
        try:
            yield
        finally:
            unet.disable_lora()  # the next request runs on the UNet as it was

    def _swap_in(self, name: str, path: Path, catalog: Sequence[Path]) -> None:
        if self._hot == path:
            return
        from peft.tuners.lora import LoraLayer

        unet = self._pipe.unet
        state, alphas = self._unet_state(name, path)
        first = self._hot is None
        if first:  # before the slot's first adapter: ranks padded to the largest the folders hold
            rank = max(lora_rank(file) for file in {*catalog, path})
            unet.enable_lora_hotswap(target_rank=rank, check_compiled="ignore")
        try:
            self._pipe.load_lora_into_unet(state, alphas, unet=unet, adapter_name=HOT_SLOT, hotswap=not first)
        except (ValueError, RuntimeError, KeyError) as exc:
            held = self._hot.stem if self._hot is not None else "another"
            raise EngineOptionError(
                f"loras: {name!r} cannot be hot-swapped into the compiled UNet, whose LoRA slot was made for "
                f"{held} ({str(exc).splitlines()[0][:200]}); serve it without --compile, or give its folder "
                "LoRAs that target the same layers"
            ) from None
        self._hot = path
        self._unit_scales = [
            (layer.scaling[HOT_SLOT], float(layer.scaling[HOT_SLOT]))
            for layer in unet.modules()
            if isinstance(layer, LoraLayer) and HOT_SLOT in layer.scaling
        ]
        log.info("hot-swapped lora %s from %s into the compiled UNet", name, path)
