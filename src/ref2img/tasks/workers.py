"""Embedded mode: worker threads beside the server take tasks from the store (the store is the queue).

One owner id per process. On start every processing task of an earlier process is handed back
(its process is gone); while running, a housekeeping thread extends this process's leases and
recovers expired ones, so a task never stays at status 2 without a live worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading

from ref2img.engines.base import EngineError
from ref2img.tasks.runner import RunContext, run_task
from ref2img.tasks.store import Store

log = logging.getLogger("ref2img.workers")


class EmbeddedWorkers:
    def __init__(self, store: Store, context: RunContext, workers: int = 1, lease_s: float = 30.0,
                 idle_poll_s: float = 1.0):
        self.store = store
        self.context = context
        self.workers = workers
        self.lease_s = lease_s
        self.idle_poll_s = idle_poll_s
        self.owner = f"embedded-{os.getpid()}-{secrets.token_hex(4)}"
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        recovered = self.store.recover(self.context.callback_payload, owner_alive=lambda owner: owner == self.owner)
        if recovered:
            log.info("handed %d tasks of a stopped process back to the queue", recovered)
        self._threads = [threading.Thread(target=self._work, name=f"ref2img-worker-{i}", daemon=True)
                         for i in range(self.workers)]
        self._threads.append(threading.Thread(target=self._housekeeping, name="ref2img-leases", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self.store.queued.notify()
        for thread in self._threads:
            thread.join(timeout_s)

    def _work(self) -> None:
        self._wait_for_engine()
        while not self._stop.is_set():
            seen = self.store.queued.version
            try:
                task = self.store.claim_next(self.owner, self.lease_s)
            except Exception:  # a locked or unreachable store: wait and try again
                log.exception("could not claim a task")
                self._stop.wait(self.idle_poll_s)
                continue
            if task is None:
                self.store.queued.wait(seen, self.idle_poll_s)
                continue
            with self._running_lock:
                self._running.add(task.id)
            try:
                run_task(task, self.owner, self.context)
            except Exception:  # the store failed under the task (locked, disk full): the
                # thread lives on, and the task's lease runs out so it is claimed and run again.
                log.exception("task %s could not be finished; it runs again when its lease expires", task.id)
            finally:
                with self._running_lock:
                    self._running.discard(task.id)

    def _wait_for_engine(self) -> None:
        """Claim nothing until the engine has loaded: while it loads (seconds to minutes on the first
        start) tasks stay queued, status 1 with their position, rather than showing status 2 with no
        step run. A load that fails is reported by the runner, on each task, with its reason."""
        with contextlib.suppress(EngineError):
            self.context.engine()

    def _housekeeping(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                with self._running_lock:
                    running = list(self._running)
                self.store.extend_lease(running, self.owner, self.lease_s)
                self.store.recover(self.context.callback_payload,
                                   owner_alive=lambda owner: owner == self.owner)
            except Exception:  # keep the leases thread alive through store hiccups
                log.exception("lease housekeeping failed")
