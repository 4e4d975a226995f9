"""Scale-out queue: Dramatiq over Redis carries task ids; the store stays the source of truth.

API nodes `send(task_id)` after the task is committed. `ref2img worker` processes consume with one
Dramatiq worker thread each (one engine per process); a message is acknowledged only when its task
has ended, and Dramatiq's Redis broker hands the unacknowledged messages of a dead worker to the
others. Delivery is at-least-once, so the handler first *claims* the task by id in the store: a
second delivery of a task that is running or finished is dropped, and one whose owner's lease ran out
is taken over. A lost message (Redis restarted) is resent from the store by `resend_stale`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import dramatiq
from dramatiq.brokers.redis import RedisBroker

log = logging.getLogger("ref2img.queue")

ACTOR_NAME = "ref2img_run_task"
QUEUE_NAME = "ref2img"


class RedisQueue:
    def __init__(self, url: str, task_timeout_s: float, heartbeat_timeout_ms: int = 15_000,
                 maintenance_chance: int = 100):
        self.broker = RedisBroker(url=url, heartbeat_timeout=heartbeat_timeout_ms,
                                  maintenance_chance=maintenance_chance)
        self._time_limit_ms = int((task_timeout_s + 120) * 1000)
        self._actor: dramatiq.Actor | None = None
        self._handler: Callable[[str], None] | None = None
        self._actor = dramatiq.actor(self._handle, broker=self.broker, actor_name=ACTOR_NAME, queue_name=QUEUE_NAME,
                                     max_retries=0, time_limit=self._time_limit_ms)

    def _handle(self, task_id: str) -> None:
        if self._handler is None:  # an API node never consumes
            raise RuntimeError("this process has no task handler")
        self._handler(task_id)

    def send(self, task_id: str) -> None:
        self._actor.send(task_id)

    def consume(self, handler: Callable[[str], None], threads: int = 1) -> dramatiq.Worker:
        """Start consuming in this process; returns the Dramatiq worker (call `.stop()` to end)."""
        self._handler = handler
        # An idle consumer polls Redis with a backoff capped at worker_timeout: 50 ms keeps the
        # enqueue-to-start latency low at about 20 cheap Redis calls a second.
        worker = dramatiq.Worker(self.broker, queues={QUEUE_NAME}, worker_threads=threads, worker_timeout=50)
        # Dramatiq prefetches 2 messages a thread by default: a GPU worker would hold the next task
        # behind a long one while another worker idles. Take only what the threads can run.
        worker.queue_prefetch = threads
        worker.start()
        return worker

    def depth(self) -> int | None:
        try:
            return self.broker.client.llen(f"{self.broker.namespace}:{QUEUE_NAME}")
        except Exception:  # noqa: BLE001 - metrics must not fail because Redis is away
            return None

    def close(self) -> None:
        self.broker.close()
