"""The query `data` object of the wire protocol, built from a task row (query answers and callbacks)."""

from __future__ import annotations

import json
import threading

from ref2img.protocol import TaskStatus
from ref2img.tasks.models import TaskRow
from ref2img.tasks.storage import Storage
from ref2img.tasks.store import Store


class DurationEstimate:
    """A moving average of how long tasks take, for `wait_time`."""

    def __init__(self, initial_s: float = 10.0, weight: float = 0.2):
        self.seconds = initial_s
        self._weight = weight
        self._lock = threading.Lock()

    def seed(self, durations: list[float]) -> None:
        if durations:
            with self._lock:
                self.seconds = sum(durations) / len(durations)

    def add(self, duration_s: float) -> None:
        with self._lock:
            self.seconds += self._weight * (duration_s - self.seconds)


def task_data(task: TaskRow, *, store: Store, storage: Storage, base_url: str, estimate: DurationEstimate,
              workers: int) -> dict:
    status = TaskStatus(task.status)
    position = store.position(task)
    if status == TaskStatus.QUEUED:
        wait = (position // max(workers, 1) + 1) * estimate.seconds
    elif status == TaskStatus.PROCESSING:
        wait = estimate.seconds * (100 - task.progress) / 100
    else:
        wait = 0
    result = ""
    if status == TaskStatus.SUCCEEDED:
        urls = [storage.signed_url(base_url, name) for name in json.loads(task.result or "[]")]
        result = json.dumps({"mask_path": urls} if task.kind == "img2mask" else {"images_path": urls, "image_path": urls})
    return {
        "task_id": task.id,
        "status": int(status),
        "progress": task.progress,
        "process": task.progress,
        "reason": task.reason,
        "position": position,
        "wait_time": round(wait, 1),
        "params": task.params or "",
        "result": result,
    }
