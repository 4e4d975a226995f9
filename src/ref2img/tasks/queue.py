"""Where accepted tasks wait for a worker: the `TaskQueue` interface and its embedded implementation.

Two queues, one contract. `EmbeddedQueue`: the store is the queue; worker threads in the server's
own process claim the oldest queued row. `RedisQueue` (redis_queue.py): Dramatiq messages carry task
ids to `ref2img worker` processes. Either way the store stays the source of truth, and a `Worker`
claims a task in the store before it runs it.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from ref2img.tasks.store.tasks import LOCAL, TaskStore
from ref2img.tasks.worker import Worker

log = logging.getLogger("ref2img.queue")


class Consumer(Protocol):
    def stop(self) -> None: ...


class TaskQueue(Protocol):
    def send(self, task_id: str, route: str = LOCAL) -> None:
        """Tell the workers of `route` about a committed task. Never raises: a task the queue could not
        take waits in the store, and `redeliver` sends it later (accepted means kept)."""

    def consume(self, worker: Worker, threads: int) -> Consumer:
        """Start handing tasks of `worker.route` to `worker` on `threads` threads of this process."""

    def redeliver(self, lease_s: float) -> int:
        """Send again what the queue lost (housekeeping); returns how many."""

    def depth(self) -> int | None:
        """Messages waiting in the broker, or None when there is no broker (or it is away)."""

    def close(self) -> None: ...


class EmbeddedQueue:
    def __init__(self, tasks: TaskStore, idle_poll_s: float = 1.0):
        self.tasks = tasks
        self.idle_poll_s = idle_poll_s

    def send(self, task_id: str, route: str = LOCAL) -> None:
        """Nothing to send: `TaskStore.create` already woke the idle workers."""

    def consume(self, worker: Worker, threads: int) -> _ClaimingThreads:
        return _ClaimingThreads(self.tasks, worker, threads, self.idle_poll_s)

    def redeliver(self, lease_s: float) -> int:
        return 0  # rows cannot be lost on the way

    def depth(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class _ClaimingThreads:
    """Threads that wait for the engine, then claim and run the oldest queued task, one at a time each."""

    def __init__(self, tasks: TaskStore, worker: Worker, threads: int, idle_poll_s: float):
        self._tasks = tasks
        self._worker = worker
        self._idle_poll_s = idle_poll_s
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"ref2img-worker-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._tasks.queued.notify()
        for thread in self._threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        self._worker.wait_for_engine()
        while not self._stop.is_set():
            seen = self._tasks.queued.version
            try:
                ran = self._worker.run_next()
            except Exception:  # a locked or unreachable store: wait and try again
                log.exception("could not claim a task")
                self._stop.wait(self._idle_poll_s)
                continue
            if not ran:
                self._tasks.queued.wait(seen, self._idle_poll_s)
