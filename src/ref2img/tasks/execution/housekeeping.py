"""Housekeeping, beside every queue: hand back tasks whose worker is gone, end those past their
deadline, and have the queue resend what it lost (Redis restarted without persistence, or was down
when the task was accepted). Duplicates are harmless: a worker claims a task by id before running it.
And, every so often, let go of what is past the retention period (tasks/retention.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time
from collections.abc import Callable

from ref2img.tasks.queue import TaskQueue
from ref2img.tasks.retention import Retention
from ref2img.tasks.store.tasks import TaskStore

log = logging.getLogger("ref2img.housekeeping")


class Housekeeper:
    def __init__(
        self,
        tasks: TaskStore,
        queue: TaskQueue,
        lease_s: float,
        owner_alive: Callable[[str | None], bool],
        retention: Retention | None = None,
    ):
        """`owner_alive(owner)`: False when a lease holder is known to be gone. An embedded server
        knows every owner but its own worker is (an earlier process); a fleet trusts the leases.
        `retention`: None keeps everything."""
        self.tasks = tasks
        self.queue = queue
        self.lease_s = lease_s
        self.owner_alive = owner_alive
        self.retention = retention
        self._retained_at = float("-inf")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._round()  # before any worker claims: an earlier process's tasks go back to the queue first
        self._thread = threading.Thread(target=self._loop, name="ref2img-housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(5)

    def _loop(self) -> None:
        every_s = self.lease_s / 3
        if self.retention is not None:
            every_s = min(every_s, self.retention.every_s)
        while not self._stop.wait(every_s):
            self._round()

    def _round(self) -> None:
        try:
            self.run_once()
        except Exception:  # Redis or the database away: try again next round
            log.warning("housekeeping failed; retrying", exc_info=True)
        release_freed_memory()

    def run_once(self) -> int:
        """One round; returns how many tasks it moved or resent."""
        recovered = self.tasks.recover(owner_alive=self.owner_alive)
        if recovered:
            log.info("handed %d tasks of a stopped worker back to the queue, or ended them", recovered)
        if self.retention is not None and time.monotonic() - self._retained_at >= self.retention.every_s:
            self._retained_at = time.monotonic()
            self.retention.run_once()
        return recovered + self.queue.redeliver(self.lease_s)


def _libc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


_malloc_trim = _libc_trim()


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the system (glibc keeps them in each thread's arena): a burst of
    large requests (25 MB bodies, decoded images) otherwise leaves the process at its high-water mark.
    bench/inline_memory.py measures it. Nothing where the C library has no `malloc_trim`."""
    if _malloc_trim is not None:
        _malloc_trim(0)
