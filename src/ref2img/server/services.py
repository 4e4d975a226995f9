"""Everything one server process runs, wired together: store, storage, keys, fetcher, engine, workers,
callback sender. Built from `ServerSettings`; the engine (torch) loads in a background thread."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ref2img.engines.base import Engine, EngineError
from ref2img.server.fetch import SafeHttp
from ref2img.server.inputs import ImageResolver
from ref2img.server.throttle import AuthThrottle
from ref2img.tasks.callbacks import CallbackSender
from ref2img.tasks.keys import KeyVerifier
from ref2img.tasks.models import TaskRow
from ref2img.tasks.runner import RunContext
from ref2img.tasks.storage import open_storage
from ref2img.tasks.store import Store
from ref2img.tasks.views import DurationEstimate, task_data
from ref2img.tasks.workers import EmbeddedWorkers

log = logging.getLogger("ref2img.server")

PUBLIC_URL_SETTING = "public_url"
LOCAL_URL = "http://127.0.0.1:8080"  # an API node given no public URL (tests, a laptop)


@dataclass
class ServerSettings:
    data_dir: Path
    model: str = "sdxl"
    model_overrides: dict[str, str] = field(default_factory=dict)
    device: str | None = None
    dtype: str | None = None  # float32 | float16 | bfloat16; default per device
    offload: str = "none"  # none | model | sequential | auto
    compile: str = "none"  # none | regional | full (torch.compile, kernels cached on disk)
    workers: int = 1
    allow_private_urls: bool = False
    queue_limit: int = 100
    task_timeout_s: float = 1800.0
    # Base of result URLs in callbacks. API nodes record theirs in the store; a worker without one
    # reads it from there.
    public_url: str | None = None
    lease_s: float = 30.0
    callback_retry_scale: float = 1.0
    max_body_bytes: int = 30 * 1024 * 1024
    auth_failure_limit: int = 20  # failed authentications per key and per client address per minute
    engine_factory: Callable[[], Engine] | None = None  # default: the local diffusers engine
    db_url: str | None = None  # default: SQLite in the data dir; postgresql+psycopg://… for scale-out
    queue_url: str = "embedded"  # or redis://…: tasks go to `ref2img worker` processes
    storage: str | Path | None = None  # default: the data dir; scale-out: a shared directory or s3://bucket/prefix

    @property
    def embedded(self) -> bool:
        return self.queue_url == "embedded"


class EngineProvider:
    """Loads the engine once, in whichever thread asks first; a failed load is retried on the next ask."""

    def __init__(self, factory: Callable[[], Engine]):
        self._factory = factory
        self._engine: Engine | None = None
        self._error: str | None = None
        self._lock = threading.Lock()
        self._loader: threading.Thread | None = None

    @property
    def state(self) -> str:
        return "loaded" if self._engine else ("error: " + self._error if self._error else "loading")

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


def local_engine_factory(settings: ServerSettings) -> Callable[[], Engine]:
    def build() -> Engine:
        from ref2img.engines.local import LocalEngine, Speedups  # torch: only in the worker side

        return LocalEngine(settings.model, device=settings.device, overrides=settings.model_overrides,
                           dtype=settings.dtype, offload=settings.offload,
                           speedups=Speedups(compile=settings.compile)).load()

    return build


class Services:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url or f"sqlite:///{data_dir / 'ref2img.db'}")
        self.public_url: str | None = settings.public_url or self.store.get_setting(PUBLIC_URL_SETTING)
        self.storage = open_storage(settings.storage or data_dir, self.store.shared_secret("file-url-signing"))
        self.verifier = KeyVerifier(self.store)
        self.throttle = AuthThrottle(limit=settings.auth_failure_limit)
        self.http = SafeHttp(allow_private=settings.allow_private_urls)
        self.images = ImageResolver(self.store, self.storage, self.http)
        self.estimate = DurationEstimate()
        self.estimate.seed(self.store.recent_durations())
        self.engine = EngineProvider(settings.engine_factory or local_engine_factory(settings))
        self.context = RunContext(store=self.store, storage=self.storage, engine=self.engine,
                                  fetch_image=self.images.fetch, estimate=self.estimate,
                                  callback_payload=lambda row: self.task_data(row, self.public_url))
        self.callbacks = CallbackSender(self.store, self.http.post, retry_scale=settings.callback_retry_scale)
        # What runs beside the HTTP side: the worker threads (embedded), or the housekeeping of a
        # fleet (an API node; its tasks run in `ref2img worker` processes).
        self.queue = None
        if settings.embedded:
            self.background = EmbeddedWorkers(self.store, self.context, workers=settings.workers,
                                           lease_s=settings.lease_s)
        else:
            from ref2img.tasks.housekeeping import Housekeeper
            from ref2img.tasks.redis_queue import RedisQueue

            self.queue = RedisQueue(settings.queue_url, settings.task_timeout_s)
            self.background = Housekeeper(self.store, self.queue, self.context.callback_payload, settings.lease_s)

    def dispatch(self, task_id: str) -> None:
        """Scale-out: tell the workers. If Redis is away the task still waits in the store, and the
        housekeeping resends it later: accepted means kept."""
        if self.queue is None:
            return
        try:
            self.queue.send(task_id)
            self.store.mark_sent([task_id])
        except Exception:  # noqa: BLE001 - any broker failure: the store keeps the task
            log.warning("queue unreachable; task %s will be sent by the housekeeping", task_id)

    def worker_count(self) -> int:
        """Workers sharing the queue: this process's threads, or the fleet's live workers."""
        if self.settings.embedded:
            return self.settings.workers
        return max(1, len(self.store.alive_workers(within_s=3 * self.settings.lease_s)))

    def task_data(self, task: TaskRow, base_url: str) -> dict:
        workers = self.worker_count() if task.status == 1 else 1
        return task_data(task, store=self.store, storage=self.storage, base_url=base_url, estimate=self.estimate,
                         workers=workers)

    def advertise_public_url(self) -> None:
        """API nodes: record this node's public URL, where workers read it (`ref2img worker` needs no flag)."""
        self.public_url = self.settings.public_url or LOCAL_URL
        self.store.set_setting(PUBLIC_URL_SETTING, self.public_url)

    def start(self) -> None:
        if self.settings.embedded:
            self.engine.preload()
        self.background.start()
        self.callbacks.start()

    def stop(self) -> None:
        self.background.stop()
        self.callbacks.stop()
        if self.queue is not None:
            self.queue.close()
        self.store.close()
