"""The worker side of one process, wired from the settings: store, storage, image inputs, engine, queue
and the context the runner needs. `ref2img serve` puts its HTTP side on top (server/services.py);
`ref2img worker` runs it alone (worker_process.py)."""

from __future__ import annotations

from pathlib import Path

from ref2img.settings import ServerSettings
from ref2img.tasks.engine_provider import EngineProvider, local_engine_factory
from ref2img.tasks.estimate import DurationEstimate
from ref2img.tasks.fetch import SafeHttp
from ref2img.tasks.inputs import ImageResolver
from ref2img.tasks.queue import EmbeddedQueue, TaskQueue
from ref2img.tasks.runner import RunContext
from ref2img.tasks.storage import open_storage
from ref2img.tasks.store import Store
from ref2img.tasks.worker import Worker


class Backend:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        data_dir = Path(settings.data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(settings.db_url or f"sqlite:///{data_dir / 'ref2img.db'}")
        self.storage = open_storage(settings.storage or data_dir, self.store.files.shared_secret("file-url-signing"))
        self.http = SafeHttp(allow_private=settings.allow_private_urls)
        self.images = ImageResolver(self.store, self.storage, self.http)
        self.estimate = DurationEstimate()
        self.estimate.seed(self.store.tasks.recent_durations())
        self.engine = EngineProvider(settings.engine_factory or local_engine_factory(settings))
        self.queue: TaskQueue
        if settings.embedded:
            self.queue = EmbeddedQueue(self.store.tasks)
        else:
            from ref2img.tasks.redis_queue import RedisQueue  # dramatiq: the scale extra

            self.queue = RedisQueue(settings.queue_url, settings.task_timeout_s, self.store.tasks)
        self.context = RunContext(
            tasks=self.store.tasks,
            storage=self.storage,
            engine=self.engine,
            fetch_image=self.images.fetch,
            estimate=self.estimate,
        )

    def worker(self) -> Worker:
        embedded = self.settings.embedded
        return Worker(
            self.store.tasks,
            self.store.fleet,
            self.context,
            kind="embedded" if embedded else "worker",
            lease_s=self.settings.lease_s,
            record=not embedded,
        )

    def close(self) -> None:
        self.queue.close()
        self.store.close()
