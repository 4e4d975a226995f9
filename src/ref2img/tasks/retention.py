"""The retention period: what a deployment keeps, and for how long (`--retention-days`, 30 by default).

Past it, a finished task goes whole: its row, its callbacks' records, its results, step previews and the
inputs kept for the cloud; and so does an upload, once no queued task could still need it (an inline
image is kept as one). A task whose callback is still being retried stays
until that ends. Files go before rows, so that a round cut short leaves rows that the next round finds
again, never files that no row names. Every store (SQLite, PostgreSQL) and storage (a folder, S3) alike.
"""

from __future__ import annotations

import logging
import time

from ref2img.tasks.storage import Storage
from ref2img.tasks.store import Store

log = logging.getLogger("ref2img.retention")

DAY_S = 86_400.0
TASK_FOLDERS = ("results", "previews", "inputs")  # each task's files live under <folder>/<task id>/


class Retention:
    def __init__(self, store: Store, storage: Storage, days: float, task_life_s: float = 0.0):
        """`task_life_s`: the longest a task may wait and run (its deadline); an upload, which a queued
        task may still need (an inline image is kept as one), is never deleted younger than that."""
        self.store = store
        self.storage = storage
        self.keep_s = days * DAY_S
        self.task_life_s = task_life_s

    @property
    def every_s(self) -> float:
        """How often a round is worth running: a quarter of the period, at most every 10 minutes."""
        return min(600.0, max(0.5, self.keep_s / 4))

    def run_once(self, now: float | None = None) -> tuple[int, int]:
        """One round: (tasks, uploads) deleted."""
        now = time.time() if now is None else now
        cutoff = now - self.keep_s
        tasks = self.store.tasks.ended_before(cutoff)
        for task_id in tasks:
            for folder in TASK_FOLDERS:
                self.storage.delete_folder(f"{folder}/{task_id}")
        self.store.tasks.delete(tasks)
        uploads = self.store.files.uploaded_before(min(cutoff, now - self.task_life_s))
        self.storage.discard([row.name for row in uploads])
        self.store.files.delete([row.id for row in uploads])
        if tasks or uploads:
            log.info(
                "retention: deleted %d finished tasks and %d uploads older than the period", len(tasks), len(uploads)
            )
        return len(tasks), len(uploads)
