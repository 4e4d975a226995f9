"""The presets one process serves (`--model` given several times): a request picks one by name, and at
most `max_loaded` are held loaded at once, the least recently used idle one set aside to make room.

Set aside means parked on the CPU where the engine can (`park()`: a GPU engine with no offload and no
compiled kernels; its weights move to host memory, and a switch back moves them up again instead of
loading from disk), while host memory allows and at most `max_parked` are parked; else unloaded.

A preset is held from the moment a task asks for it until the task ends (`using`), so one running on
another worker thread is never unloaded under it; a task that needs room while every loaded preset is
busy waits for one to finish.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

from ref2img.engines.base import Engine, EngineOptionError
from ref2img.tasks.execution.engine_provider import EngineProvider

log = logging.getLogger("ref2img.engine")
GPU_HEADROOM_BYTES = 2 * 2**30  # left free beside a new preset on a GPU (activations, the VAE's decode)
HOST_HEADROOM_BYTES = 4 * 2**30  # host memory left free beside a parked preset


class EnginePool:
    def __init__(self, providers: dict[str, EngineProvider], default: str, max_loaded: int = 0, max_parked: int = 2):
        """`providers`: preset name -> its engine (loaded on first use). `max_loaded`: 0 is auto: every
        preset on a CPU; on a GPU, a new one loads only where its measured size fits the free memory.
        `max_parked`: presets kept on the CPU at most (0: an idle preset is always unloaded)."""
        if default not in providers:
            raise ValueError(f"the default preset {default!r} is not among {sorted(providers)}")
        self.providers = providers
        self.default = default
        self.max_loaded = max_loaded
        self.max_parked = max_parked
        self._resident: OrderedDict[str, None] = OrderedDict()  # loaded or loading, least recent first
        self._parked: OrderedDict[str, None] = OrderedDict()  # set aside on the CPU, least recent first
        self._in_use: dict[str, int] = dict.fromkeys(providers, 0)
        self._footprint: dict[str, int] = {}  # GPU bytes each preset took when it loaded
        self._changed = threading.Condition()
        self._resident[default] = None  # the process preloads its default preset at start

    @property
    def names(self) -> list[str]:
        return list(self.providers)

    def check(self, name: str | None) -> str:
        """The preset a request names (none: the default); EngineOptionError naming the field otherwise."""
        chosen = name or self.default
        if chosen not in self.providers:
            raise EngineOptionError(
                f"model: {chosen!r} is not a preset of this server; it offers {', '.join(self.names)}"
            )
        return chosen

    def states(self) -> dict[str, str]:
        """Each preset's state in /healthz's words: loaded, loading, not loaded, or its load's error."""
        states = {}
        for name, provider in self.providers.items():
            state = provider.state
            if name in self._parked:
                states[name] = "parked on the CPU"
            else:
                known = state.loaded or state.failed or name in self._resident
                states[name] = str(state) if known else "not loaded"
        return states

    @contextlib.contextmanager
    def using(self, name: str | None = None) -> Iterator[Engine]:
        """The engine of preset `name` (none: the default), held for the caller until the block ends."""
        chosen = self.check(name)
        with self._changed:
            self._parked.pop(chosen, None)  # coming back to the GPU (`_load` moves its weights up): never unloaded now
            while not self._has_room(chosen):
                victim = next((held for held in self._resident if held != chosen and not self._in_use[held]), None)
                if victim is None:
                    self._changed.wait()  # every loaded preset runs a task: the first to end makes room
                    continue
                self._set_aside(victim)
            self._resident[chosen] = None
            self._resident.move_to_end(chosen)
            self._in_use[chosen] += 1
        try:
            yield self._load(chosen)
        finally:
            with self._changed:
                self._in_use[chosen] -= 1
                self._changed.notify_all()

    def _has_room(self, name: str) -> bool:
        if name in self._resident:
            return True
        if self.max_loaded:
            return len(self._resident) < self.max_loaded
        free = _gpu_free_bytes()
        if free is None or not self._resident:
            return True  # a CPU keeps every preset; the first one always loads
        needed = self._footprint.get(name) or max(self._footprint.values(), default=0)
        return free >= needed + GPU_HEADROOM_BYTES

    def _load(self, name: str) -> Engine:
        provider = self.providers[name]
        if provider.loaded is not None:
            unpark = getattr(provider.loaded, "unpark", None)
            if unpark is not None:
                unpark()  # a no-op unless it was parked
            return provider.loaded
        before = _gpu_used_bytes()
        engine = provider()
        if before is not None:
            self._footprint[name] = max(0, (_gpu_used_bytes() or 0) - before)
        return engine

    def _set_aside(self, name: str) -> None:
        """Make room on the GPU: park `name` on the CPU where its engine can and host memory allows (the
        least recently parked unloaded past `max_parked`), else unload it."""
        self._resident.pop(name, None)
        engine = self.providers[name].loaded
        park = getattr(engine, "park", None)
        if park is not None and self.max_parked and _host_has_room(self._footprint.get(name, 0)) and park():
            log.info("parked preset %s on the CPU to make room for another (--max-loaded %s)", name, self.max_loaded)
            self._parked[name] = None
            while len(self._parked) > self.max_parked:
                self._unload(next(iter(self._parked)))
            _empty_gpu_cache()
            return
        self._unload(name)

    def _unload(self, name: str) -> None:
        log.info("unloading preset %s to make room for another (--max-loaded %s)", name, self.max_loaded or "auto")
        self._resident.pop(name, None)
        self._parked.pop(name, None)
        self.providers[name].unload()
        gc.collect()
        _empty_gpu_cache()


def _empty_gpu_cache() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _host_has_room(needed: int) -> bool:
    """Host memory has room for `needed` more bytes, with headroom (Linux's MemAvailable; elsewhere yes)."""
    try:
        with open("/proc/meminfo") as meminfo:
            line = next(line for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return True
    return int(line.split()[1]) * 1024 >= needed + HOST_HEADROOM_BYTES


def _gpu_free_bytes() -> int | None:
    torch = sys.modules.get("torch")  # only where an engine already brought torch in
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.mem_get_info()[0])


def _gpu_used_bytes() -> int | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return None
    return int(torch.cuda.memory_allocated())


def preset_providers(
    models: list[str], factory: Callable[[str], Callable[[], Engine]], name_of: Callable[[str], str]
) -> dict[str, EngineProvider]:
    """One provider per `--model`, keyed by the preset's name (refused when two share one)."""
    providers: dict[str, EngineProvider] = {}
    for model in models:
        name = name_of(model)
        if name in providers:
            raise EngineOptionError(f"--model: two presets are named {name!r}; a request could not tell them apart")
        providers[name] = EngineProvider(factory(model))
    return providers
