"""Scale-out queue: Dramatiq over Redis carries task ids; the store stays the source of truth.

API nodes `send(task_id)` after the task is committed. `ref2img worker` processes consume with one
Dramatiq worker thread each (one engine per process); a message is acknowledged only when its task
has ended, and Dramatiq's Redis broker hands the unacknowledged messages of a dead worker to the
others. Delivery is at-least-once, so the handler first *claims* the task by id in the store: a
second delivery of a task that is running or finished is dropped, and one whose owner's lease ran out
is taken over. A lost message (Redis restarted) is resent from the store by `redeliver`.

Queues: one a route (`ref2img` for the local GPUs, `ref2img-cloud` for the cloud followers), and for a
generation that names a preset, one a preset (`ref2img.preset.<name>`), which only the workers holding
that preset consume (`ref2img worker --model …`): a task never reaches a worker without its model.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from ref2img.lifecycle import LOCAL, ROUTES
from ref2img.tasks.queue import TaskRunner
from ref2img.tasks.store.tasks import TaskStore

log = logging.getLogger("ref2img.queue")

ACTOR_NAME = "ref2img_run_task"
QUEUE_NAME = "ref2img"
# One queue a route: GPU workers take the local one; `ref2img worker --engine tomoviee` the cloud one.
QUEUE_NAMES = {route: QUEUE_NAME if route == LOCAL else f"{QUEUE_NAME}-{route}" for route in ROUTES}


_QUEUE_KEY = re.compile(rf"{QUEUE_NAME}(-[a-z]+|\.preset\.[A-Za-z0-9_-]+)?")


def preset_queue_name(preset: str) -> str:
    """The local queue of one preset's generations; a name Dramatiq accepts, distinct for distinct presets."""
    slug = re.sub(r"[^A-Za-z0-9_-]", "_", preset)
    if slug != preset:  # two names that differ only in the characters replaced must not share a queue
        slug += "-" + hashlib.sha256(preset.encode()).hexdigest()[:8]
    return f"{QUEUE_NAME}.preset.{slug}"


class RedisQueue:
    def __init__(
        self,
        url: str,
        task_timeout_s: float,
        tasks: TaskStore,
        heartbeat_timeout_ms: int = 15_000,
        maintenance_chance: int = 100,
    ):
        self.tasks = tasks
        self.broker = RedisBroker(
            url=url, heartbeat_timeout=heartbeat_timeout_ms, maintenance_chance=maintenance_chance
        )
        self._time_limit_ms = int((task_timeout_s + 120) * 1000)
        self._runners: dict[str, TaskRunner] = {}  # queue name -> who runs its tasks in this process
        self._actors = {
            queue_name: self._declare(route, queue_name, ACTOR_NAME if route == LOCAL else f"{ACTOR_NAME}_{route}")
            for route, queue_name in QUEUE_NAMES.items()
        }
        self._declaring = threading.Lock()

    def _declare(self, route: str, queue_name: str, actor_name: str) -> dramatiq.Actor:
        return dramatiq.actor(
            broker=self.broker,
            actor_name=actor_name,
            queue_name=queue_name,
            max_retries=0,
            time_limit=self._time_limit_ms,
        )(self._handler(route, queue_name))

    def _actor(self, route: str, preset: str | None) -> dramatiq.Actor:
        """The actor of a task's queue: its route's, or its preset's (declared on first use)."""
        if route != LOCAL or preset is None:
            return self._actors[QUEUE_NAMES[route]]
        queue_name = preset_queue_name(preset)
        with self._declaring:
            if queue_name not in self._actors:
                actor_name = ACTOR_NAME + queue_name.removeprefix(QUEUE_NAME)
                self._actors[queue_name] = self._declare(LOCAL, queue_name, actor_name)
            return self._actors[queue_name]

    def _handler(self, route: str, queue_name: str):
        def handle(task_id: str) -> None:
            runner = self._runners.get(queue_name)
            if runner is None:  # an API node never consumes
                raise RuntimeError(f"this process runs no {route} tasks")
            runner.run_by_id(task_id)

        handle.__name__ = f"run_{route}_task"
        return handle

    def send(self, task_id: str, route: str = LOCAL, preset: str | None = None) -> None:
        try:
            self._actor(route, preset).send(task_id)
            self.tasks.mark_sent([task_id])
        except Exception:  # noqa: BLE001 - any broker failure: the store keeps the task
            log.warning("queue unreachable; task %s will be sent by the housekeeping", task_id)

    def redeliver(self, lease_s: float) -> int:
        # Messages still in Redis are not resent; an empty Redis queue while tasks wait means their
        # messages were lost (Redis restarted without persistence), so those are resent too.
        lost = self.depth() == 0
        stale = self.tasks.unsent_queued(older_than_s=2 * lease_s if lost else float("inf"))
        for task_id, route, preset in stale:
            self._actor(route, preset).send(task_id)
        if stale:
            self.tasks.mark_sent([task_id for task_id, _, _ in stale])
            log.info("resent %d queue messages", len(stale))
        return len(stale)

    def consume(self, worker: TaskRunner, threads: int = 1) -> _ConsumerAfterEngine:
        """Start consuming in this process once the runner's engine has loaded (a message is never
        taken before); returns the consumer (call `.stop()` to end)."""
        presets = worker.presets if worker.route == LOCAL else ()
        queues = {QUEUE_NAMES[worker.route], *(self._actor(LOCAL, preset).queue_name for preset in presets)}
        for queue_name in queues:
            self._runners[queue_name] = worker

        def start() -> dramatiq.Worker:
            # An idle consumer polls Redis with a backoff capped at worker_timeout: 50 ms keeps the
            # enqueue-to-start latency low at about 20 cheap Redis calls a second.
            consumer = dramatiq.Worker(self.broker, queues=queues, worker_threads=threads, worker_timeout=50)
            # Dramatiq prefetches 2 messages a thread by default: a GPU worker would hold the next task
            # behind a long one while another worker idles. Take only what the threads can run.
            consumer.queue_prefetch = threads
            consumer.start()
            return consumer

        return _ConsumerAfterEngine(worker.wait_for_engine, start)

    def depth(self) -> int | None:
        try:
            # Every queue's list, the preset queues other nodes declared included (not Dramatiq's `.msgs`,
            # `.DQ` and `.XQ` keys beside them).
            prefix = f"{self.broker.namespace}:"
            keys = self.broker.client.scan_iter(match=f"{prefix}{QUEUE_NAME}*", count=1000)
            names = [key for key in keys if _QUEUE_KEY.fullmatch(key.decode().removeprefix(prefix))]
            return sum(self.broker.client.llen(name) for name in names)
        except Exception:  # noqa: BLE001 - metrics must not fail because Redis is away
            return None

    def close(self) -> None:
        self.broker.close()


class _ConsumerAfterEngine:
    """A Dramatiq worker started in the background once `wait_for_engine()` returns."""

    def __init__(self, wait_for_engine: Callable[[], None], start: Callable[[], dramatiq.Worker]):
        self._lock = threading.Lock()
        self._stopped = False
        self._consumer: dramatiq.Worker | None = None

        def begin() -> None:
            wait_for_engine()
            with self._lock:
                if not self._stopped:
                    self._consumer = start()

        self._starter = threading.Thread(target=begin, name="ref2img-queue-start", daemon=True)
        self._starter.start()

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            consumer = self._consumer
        if consumer is not None:
            consumer.stop()
