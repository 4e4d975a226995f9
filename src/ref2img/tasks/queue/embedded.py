"""The embedded queue: the store is the queue. Worker threads in the server's own process wait for
the engine, then claim the oldest queued row of their route, one task at a time each."""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ref2img.lifecycle import LOCAL
from ref2img.tasks.store.tasks import TaskStore

if TYPE_CHECKING:
    from ref2img.tasks.queue import TaskRunner

log = logging.getLogger("ref2img.queue")


class EmbeddedQueue:
    def __init__(self, tasks: TaskStore, idle_poll_s: float = 1.0):
        self.tasks = tasks
        self.idle_poll_s = idle_poll_s

    def send(self, task_id: str, route: str = LOCAL, preset: str | None = None) -> None:
        """Nothing to send: `TaskStore.create` already woke the idle workers."""

    def consume(self, worker: TaskRunner, threads: int) -> _ClaimingThreads:
        return _ClaimingThreads(self.tasks, worker, threads, self.idle_poll_s)

    def redeliver(self, lease_s: float) -> int:
        return 0  # rows cannot be lost on the way

    def depth(self) -> int | None:
        return None

    def close(self) -> None:
        pass


class _ClaimingThreads:
    """Threads that wait for the engine, then claim and run the oldest queued task, one at a time each."""

    def __init__(self, tasks: TaskStore, worker: TaskRunner, threads: int, idle_poll_s: float):
        self._tasks = tasks
        self._worker = worker
        self._idle_poll_s = idle_poll_s
        self._stop = threading.Event()
        self._loading: set[threading.Thread] = set()  # threads still waiting for the engine to load
        self._threads = [
            threading.Thread(target=self._work, name=f"ref2img-worker-{i}", daemon=True) for i in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop claiming, and wait (at most `timeout_s` in all) for the threads that run a step to end. One
        still waiting for the engine to load holds no task: it is not waited for (daemon, it ends with
        the process), so a server stopped while it loads stops at once."""
        self._stop.set()
        self._tasks.queued.notify()
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            if thread not in self._loading:
                thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        self._loading.add(threading.current_thread())
        try:
            self._worker.wait_for_engine()
        finally:
            self._loading.discard(threading.current_thread())
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
