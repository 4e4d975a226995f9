"""The query `data` object of the wire protocol, rendered from a task row for query answers and callbacks."""

from __future__ import annotations

import json
import time

from ref2img.lifecycle import RECOGNIZE
from ref2img.protocol import TaskStatus
from ref2img.tasks.store.models import TaskRow
from ref2img.tasks.execution.estimate import DurationEstimate
from ref2img.tasks.inputs import STORED
from ref2img.tasks.storage import Storage
from ref2img.tasks.store.tasks import TaskStore


def task_data(
    task: TaskRow,
    *,
    tasks: TaskStore,
    storage: Storage,
    base_url: str,
    estimate: DurationEstimate,
    workers: int,
    waiting_for: str = "",
) -> dict:
    """`waiting_for`: why a queued task cannot start (no live worker holds its preset): its `reason`, and
    its `wait_time` is then the time left to its deadline, the longest it can wait."""
    status = TaskStatus(task.status)
    position = tasks.position(task)
    if status == TaskStatus.QUEUED and waiting_for:
        wait = max(0.0, task.deadline - time.time())
    elif status == TaskStatus.QUEUED:
        wait = (position // max(workers, 1) + 1) * estimate.seconds
    elif status == TaskStatus.PROCESSING and task.remote_wait_s is not None:
        wait = task.remote_wait_s  # in the cloud: the cloud's own estimate
    elif status == TaskStatus.PROCESSING:
        wait = estimate.seconds * (100 - task.progress) / 100
    else:
        wait = 0
    result = ""
    if status == TaskStatus.SUCCEEDED:
        urls = [storage.signed_url(base_url, name) for name in json.loads(task.result or "[]")]
        result = json.dumps(
            {"mask_path": urls} if task.kind == RECOGNIZE else {"images_path": urls, "image_path": urls}
        )
    data = {
        "task_id": task.id,
        "status": int(status),
        "progress": task.progress,
        "process": task.progress,
        "reason": waiting_for or task.reason,
        "position": position,
        "wait_time": round(wait, 1),
        "params": task.params or "",
        "result": result,
        "route": task.route,  # our extension: where it runs, "local" (our GPUs) or "cloud" (Tomoviee)
    }
    if task.marks:  # our extensions: what the images carry (C2PA, the watermark's id), and `flagged`
        marks = json.loads(task.marks)
        if "flagged" in marks:
            data["flagged"] = marks.pop("flagged")
        data["marks"] = marks
    if status == TaskStatus.PROCESSING and task.preview:  # our extension: the latest step preview
        data["preview"] = storage.signed_url(base_url, task.preview)
    return data


def task_summary(task: TaskRow, data: dict) -> dict:
    """A task in `GET /v1/tasks`: its query `data`, what it was, when, and the settings it was asked
    with (images sent inline as data: URIs, kept as `stored:` files, are left out)."""
    settings = {
        field: (None if isinstance(value, str) and value.startswith(("data:", STORED)) else value)
        for field, value in json.loads(task.request).items()
        if field not in ("callback", "params")
    }
    return {
        **data,
        "kind": task.kind,
        "created_at": task.created_at,
        "finished_at": task.finished_at,
        "settings": settings,
    }
