"""Scale-out housekeeping, run by API nodes and workers alike: hand back tasks whose worker's lease
ran out, and resend queue messages for queued tasks that have none in flight (lost with a Redis
restart, or never sent because Redis was down when the task was accepted). Duplicates are harmless:
a worker claims a task by id before running it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ref2img.tasks.redis_queue import RedisQueue
from ref2img.tasks.store import Store

log = logging.getLogger("ref2img.housekeeping")


class Housekeeper:
    def __init__(self, store: Store, queue: RedisQueue, callback_payload, lease_s: float,
                 extend: Callable[[], None] = lambda: None):
        self.store = store
        self.queue = queue
        self.callback_payload = callback_payload
        self.lease_s = lease_s
        self.extend = extend  # a worker extends the leases of its running tasks here
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ref2img-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(self.lease_s / 3):
            try:
                self.run_once()
            except Exception:  # Redis or the database away: try again next round
                log.warning("housekeeping failed; retrying", exc_info=True)

    def run_once(self) -> int:
        self.extend()
        # Leases say who is alive: a processing task is orphaned only once its lease has run out.
        self.store.recover(self.callback_payload, owner_alive=lambda owner: True)
        # Messages still in Redis are not resent; an empty Redis queue while tasks wait means their
        # messages were lost (Redis restarted without persistence), so those are resent too.
        lost = self.queue.depth() == 0
        stale = self.store.unsent_queued(older_than_s=2 * self.lease_s if lost else float("inf"))
        for task_id in stale:
            self.queue.send(task_id)
        if stale:
            self.store.mark_sent(stale)
            log.info("resent %d queue messages", len(stale))
        return len(stale)
