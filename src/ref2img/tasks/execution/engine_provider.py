"""The engine of one process: loaded once, in the background, by whichever thread asks first."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from ref2img.engines.base import Engine, EngineError
from ref2img.settings import ServerSettings
from ref2img.safe_http import SafeHttp

log = logging.getLogger("ref2img.engine")


@dataclass(frozen=True)
class EngineState:
    """Where the engine of this process is: `loading`, `loaded`, or `failed` with the reason."""

    loaded: bool = False
    error: str | None = None  # the last load's failure, until a load succeeds

    @property
    def failed(self) -> bool:
        return self.error is not None

    def __str__(self) -> str:  # /healthz's words
        return "loaded" if self.loaded else (f"error: {self.error}" if self.failed else "loading")


class EngineProvider:
    """Loads the engine once, in whichever thread asks first; a failed load is retried on the next ask."""

    def __init__(self, factory: Callable[[], Engine]):
        self._factory = factory
        self._engine: Engine | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None

    @property
    def state(self) -> EngineState:
        return EngineState(loaded=self._engine is not None, error=None if self._engine else self._error)

    def __call__(self) -> Engine:
        with self._lock:
            if self._engine is None:
                try:
                    self._engine = self._factory()
                    self._error = None
                except EngineError as exc:
                    self._error = str(exc)
                    raise
            return self._engine

    @property
    def loaded(self) -> Engine | None:
        return self._engine

    def unload(self) -> None:
        """Drop the engine (its weights go with the last reference); the next ask loads it again."""
        with self._lock:
            self._engine = None

    def preload(self) -> None:
        """Load in a background thread (one at a time), so start-up never waits for torch."""
        if self._loader is not None and self._loader.is_alive():
            return

        def load() -> None:
            try:
                self()
            except EngineError as exc:
                log.error("engine unavailable: %s", exc)

        self._loader = threading.Thread(target=load, name="ref2img-engine-load", daemon=True)
        self._loader.start()


def local_engine_factory(settings: ServerSettings, model: str | None = None) -> Callable[[], Engine]:
    """The local engine of `model` (default: the settings' default preset), with this node's flags."""

    def build() -> Engine:
        return settings.local_options(model).build().load()  # torch: imported here, only in the worker side

    return build


def preset_name(settings: ServerSettings, model: str) -> str:
    """The name a request uses for `model` (a preset, a folder or a preset file): its preset's own."""
    from ref2img.engines.local.presets import resolve_preset

    try:
        return resolve_preset(model, settings.model_overrides).name
    except EngineError:
        return model  # its load says what is wrong with it


def cloud_engine_factory(settings: ServerSettings, http: SafeHttp) -> Callable[[], Engine]:
    """The tomoviee engine: results are downloaded through the guarded HTTP client (size and time caps)."""

    def build() -> Engine:
        from ref2img.engines.tomoviee import CloudCredentials, TomovieeEngine
        from ref2img.images import decode_image

        credentials = CloudCredentials.load(settings.cloud_credentials_file)
        return TomovieeEngine(credentials, http.get, decode_image, base_url=settings.cloud_url)

    return build


# Engines by name (`--engine`, `--overflow`): the one table a new engine is added to.
ENGINES: dict[str, Callable[[ServerSettings, SafeHttp], Callable[[], Engine]]] = {
    "local": lambda settings, http: local_engine_factory(settings),
    "tomoviee": cloud_engine_factory,
}
