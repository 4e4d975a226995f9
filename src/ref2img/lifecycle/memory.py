"""The ledger and outputs of in-process runs (`ref2img generate`, `ref2img mcp`'s local backend): the
same statuses, cancel and progress as a server's store, kept in memory; images written to a folder."""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ref2img.lifecycle.task import GENERATE, LOCAL
from ref2img.protocol import TaskStatus

if TYPE_CHECKING:
    from PIL import Image


@dataclass
class MemoryTask:
    """One task of a `MemoryLedger`: the `TaskView` the runner reads, and what it wrote."""

    id: str
    request: str
    kind: str = GENERATE
    app_key: str = ""
    route: str = LOCAL
    status: TaskStatus = TaskStatus.QUEUED
    progress: int = 0
    steps: tuple[int, int] = (0, 0)  # engine steps (done, in all), for observers that show steps
    reason: str = ""
    result: list[str] = field(default_factory=list)
    preview: str | None = None
    cancel_requested: bool = False
    marks: dict[str, Any] = field(default_factory=dict)  # what its images carry; `flagged`, if filtered


class MemoryLedger:
    """Tasks in memory, safe to share between the threads that run them and those that ask about them."""

    def __init__(self, prefix: str = "local"):
        self._prefix = prefix
        self._tasks: dict[str, MemoryTask] = {}
        self._lock = threading.Lock()

    def add(self, request: BaseModel, kind: str = GENERATE, task_id: str | None = None) -> MemoryTask:
        task_id = task_id or f"{self._prefix}-{secrets.token_hex(8)}"
        task = MemoryTask(id=task_id, request=request.model_dump_json(), kind=kind)
        with self._lock:
            self._tasks[task.id] = task
        return task

    def get(self, task_id: str) -> MemoryTask | None:
        return self._tasks.get(task_id)

    def position(self, task_id: str) -> int | None:
        """How many queued tasks are ahead of this queued one; None once it left the queue."""
        with self._lock:
            queued = [task.id for task in self._tasks.values() if task.status == TaskStatus.QUEUED]
        return queued.index(task_id) if task_id in queued else None

    def claim(self, task_id: str) -> MemoryTask | None:
        """Start a queued task; None when it ended first (cancelled while it waited)."""
        with self._lock:
            task = self._tasks[task_id]
            if task.status != TaskStatus.QUEUED:
                return None
            task.status = TaskStatus.PROCESSING
            return task

    def request_cancel(self, task_id: str) -> MemoryTask | None:
        """Queued: cancelled at once. Running: flagged; the runner stops at its next step."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return None
            task.cancel_requested = True
            if task.status == TaskStatus.QUEUED:
                task.status, task.reason = TaskStatus.CANCELLED, "cancelled by the client"
            return task

    def set_steps(self, task_id: str, done: int, total: int) -> None:
        """`RunContext.on_step`: the engine's steps, finer than the percent the ledger keeps."""
        self._tasks[task_id].steps = (done, total)

    def cancel_all(self) -> None:
        for task_id in list(self._tasks):
            self.request_cancel(task_id)

    # -- the Ledger protocol (the runner's calls) ------------------------------------------------------
    def set_progress(self, task_id: str, owner: str, progress: int) -> None:
        self._tasks[task_id].progress = progress

    def set_preview(self, task_id: str, owner: str, name: str) -> None:
        self._tasks[task_id].preview = name

    def should_stop(self, task_id: str, owner: str) -> TaskStatus | None:
        return TaskStatus.CANCELLED if self._tasks[task_id].cancel_requested else None

    def release(self, task_id: str, owner: str) -> bool:
        with self._lock:
            task = self._tasks[task_id]
            if task.status != TaskStatus.PROCESSING:
                return False
            task.status, task.progress, task.preview = TaskStatus.QUEUED, 0, None
            return True

    def finish(
        self,
        task_id: str,
        owner: str | None,
        status: TaskStatus,
        *,
        result: list[str] | None = None,
        reason: str = "",
        marks: dict[str, Any] | None = None,
    ) -> bool:
        with self._lock:
            task = self._tasks[task_id]
            if task.status.is_final:
                return False
            task.status, task.reason, task.result = status, reason, list(result or [])
            task.marks = dict(marks or {})
            if status == TaskStatus.SUCCEEDED:
                task.progress = 100
            return True


class FolderOutputs:
    """Images as PNGs in one folder, named after their task: `<task>-1.png`, `<task>-2.png` …"""

    def __init__(self, folder: Path):
        self.folder = folder

    def save_result(self, task_id: str, index: int, image: Image.Image, png: bytes | None = None) -> str:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{task_id}-{index + 1}.png"
        if png is None:
            image.save(path)
        else:
            path.write_bytes(png)
        return str(path)

    def discard(self, names: list[str]) -> None:
        for name in names:
            Path(name).unlink(missing_ok=True)

    def save_preview(self, task_id: str, step: int, image: Image.Image) -> str:
        raise NotImplementedError("in-process runs make no step previews (RunContext.previews is False)")
