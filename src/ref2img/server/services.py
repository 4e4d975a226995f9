"""Everything one server process runs: the worker side (`Backend`: store, storage, engine, queue) and
the HTTP side on top (key verifier, auth throttle, callback sender, wire rendering). Embedded, this
process also runs the worker threads; as an API node of a fleet, the housekeeping only."""

from __future__ import annotations

import sys

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ref2img.auth.keys import KeyVerifier
from ref2img.lifecycle import LOCAL
from ref2img.server.callbacks import CallbackSender
from ref2img.server.sessions import Sessions
from ref2img.server.studio import SignInLink
from ref2img.server.throttle import AuthThrottle
from ref2img.server.views import task_data
from ref2img.settings import ServerSettings
from ref2img.tasks.backend import CLOUD_WORKER_KIND, Backend
from ref2img.tasks.execution.housekeeping import Housekeeper
from ref2img.tasks.retention import Retention
from ref2img.tasks.store.models import TaskRow
from ref2img.tasks.queue import Consumer
from ref2img.tasks.store import StoreError

LOCAL_URL = "http://127.0.0.1:8080"  # an API node given no public URL (tests, a laptop)


class Services:
    def __init__(self, settings: ServerSettings):
        self.settings = settings
        self.backend = Backend(settings)
        self.store = self.backend.store
        self.storage = self.backend.storage
        self.http = self.backend.http
        self.images = self.backend.images
        self.estimate = self.backend.estimate
        self.engine = self.backend.engine
        self.queue = self.backend.queue
        self.public_url = settings.public_url or LOCAL_URL
        self.verifier = KeyVerifier(self.store)
        self.sessions = Sessions(
            self.store.files.shared_secret("studio-session"),
            secure_cookie=self.public_url.startswith("https://"),
            store=self.store.studio,
        )
        self.studio = SignInLink(self.store)
        self.throttle = AuthThrottle(limit=settings.auth_failure_limit)
        self.callbacks = CallbackSender(
            self.store, self.http.post, self._callback_body, retry_scale=settings.callback_retry_scale
        )
        # Embedded: this process's workers (one a route: local GPUs, cloud followers); an earlier
        # process's tasks are orphans at once. A fleet's API node runs no worker and trusts the leases.
        routes = self.backend.routes if settings.embedded else {}
        self.workers = {route: self.backend.worker(route) for route in routes}
        own = {worker.owner for worker in self.workers.values()}
        self.housekeeper = Housekeeper(
            self.store.tasks,
            self.queue,
            settings.lease_s,
            owner_alive=(lambda owner: owner in own) if self.workers else (lambda owner: True),
            retention=Retention(self.store, self.backend.storage, settings.retention_days, settings.task_timeout_s)
            if settings.retention_days > 0
            else None,
        )
        self._consumers: list[Consumer] = []

    def worker_count(self, preset: str | None = None) -> int:
        """Workers sharing the local queue (of `preset`, when given): this process's threads, or the
        fleet's live GPU workers (cloud followers, `ref2img worker --engine tomoviee`, take only the cloud
        queue). 0 only for a preset that no live worker holds."""
        if preset is not None:
            return self.presets_held().get(preset, 0)
        if self.settings.embedded:
            return self.settings.workers
        alive = self.store.fleet.alive(within_s=3 * self.settings.lease_s)
        return max(1, sum(1 for row in alive if not row.id.startswith(f"{CLOUD_WORKER_KIND}-")))

    def offered_presets(self) -> tuple[list[str], str | None]:
        """The presets a request may name here, and the one a request that names none gets. A fleet's API
        node with no --model follows its live workers: the presets they advertise, the default the one most
        of them hold (ties by name); none while no worker is alive."""
        if not self.settings.follow_workers:
            return self.backend.preset_names, self.backend.pool.default
        held = self.presets_held()
        names = sorted(held, key=lambda name: (-held[name], name))
        return names, names[0] if names else None

    def presets_held(self) -> dict[str, int]:
        """Preset -> the local workers that hold it: this process's threads (every preset of its pool),
        or the fleet's live workers, as their heartbeats say."""
        if self.settings.embedded:
            return dict.fromkeys(self.backend.preset_names, self.settings.workers)
        return self.store.fleet.presets_held(within_s=3 * self.settings.lease_s)

    def task_data(self, task: TaskRow, base_url: str) -> dict:
        queued_for_preset = task.status == 1 and task.route == LOCAL and task.preset is not None
        if queued_for_preset:
            workers = self.worker_count(task.preset)  # those holding its preset: 0 while none does
        else:
            workers = self.worker_count() if task.status == 1 else 1
        unheld = queued_for_preset and workers == 0
        return task_data(
            task,
            tasks=self.store.tasks,
            storage=self.storage,
            base_url=base_url,
            estimate=self.estimate,
            workers=workers,
            waiting_for=(
                f"no live worker holds preset {task.preset!r}: it waits for one (ref2img worker --model "
                f"{task.preset}) until its deadline"
                if unheld
                else ""
            ),
        )

    def _callback_body(self, task_id: str) -> dict:
        task = self.store.tasks.get(task_id)
        if task is None:
            raise StoreError(f"task {task_id} is gone")
        return self.task_data(task, self.public_url)

    def announce_studio(self) -> None:
        """Print a studio sign-in link, as Jupyter prints its URL (stderr: the log, never a request). It
        works once, within 10 minutes; `ref2img keys studio-link` prints a fresh one."""
        self.studio.app_key()  # made now, so that the first sign-in is instant
        print(f"ref2img studio: {self.studio.url(self.public_url)}", file=sys.stderr, flush=True)

    def start(self) -> None:
        self.housekeeper.start()
        if self.workers:
            self.engine.preload()  # the cloud's own when it is the only engine
            if self.backend.cloud_engine not in (None, self.engine):
                self.backend.cloud_engine.preload()
        for route, worker in self.workers.items():
            worker.start()
            self._consumers.append(self.queue.consume(worker, threads=self.backend.routes[route]))
        self.callbacks.start()

    def stop(self) -> None:
        # The workers first: their running jobs stop at the next step and go back to the queue, so the
        # consumers' threads are free to end at once.
        for worker in self.workers.values():
            worker.stop()
        for consumer in self._consumers:
            consumer.stop()
        self.housekeeper.stop()
        self.callbacks.stop()
        self.backend.close()


def services(request: Request) -> Services:
    return request.app.state.services


# What a route names to reach this process's services: a FastAPI dependency, not a lookup in its body.
Svc = Annotated[Services, Depends(services)]


async def store_read(svc: Services, read):
    """Run a read of the store. SQLite in WAL mode answers reads from the local file without ever
    waiting for a writer, in about 0.1 ms: cheaper inline than a hop to the thread pool (2x the
    query throughput). A networked store (PostgreSQL) is read off the event loop."""
    if svc.store.is_sqlite:
        return read()
    return await run_in_threadpool(read)
