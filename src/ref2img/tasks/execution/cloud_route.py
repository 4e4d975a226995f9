"""The cloud route (`RemoteRoute`): the cloud engine, the URLs the cloud fetches the task's images
from, where the cloud task's id is kept, and (hybrid servers) the way back to the local queue when the
cloud never took the task."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ref2img.engines.base import Engine, Job, RepaintJob
from ref2img.lifecycle import TaskView
from ref2img.protocol import CreateRequest, RepaintRequest
from ref2img.tasks.store.tasks import TaskStore


@dataclass
class CloudRoute:
    engine: Callable[[], Engine]
    tasks: TaskStore
    # (source, field, app_key, task_id) -> a URL the cloud can fetch: public URLs as given; uploads,
    # our own files and data URIs as signed, expiring URLs of this server.
    forwardable: Callable[[str, str, str, str], str]
    # Hybrid servers: (task_id, owner) -> moved back to the local queue and sent there. None: the cloud
    # is the only engine, and a cloud that never took the task fails it.
    back_to_local: Callable[[str, str], bool] | None = None

    def job(self, task: TaskView, owner: str, request: CreateRequest, load: Callable[[str, str], Image.Image]) -> Job:
        handoff = TaskHandoff(self.tasks, task.id, owner)
        return Job.from_request(request, load, sources=self.sources(task, request), handoff=handoff)

    def repaint_job(
        self, task: TaskView, owner: str, request: RepaintRequest, load: Callable[[str, str], Image.Image]
    ) -> RepaintJob:
        fields = {"init_image": request.init_image, "mask_url": request.mask_url}
        sources = {
            field: self.forwardable(source, field, task.app_key, task.id) for field, source in fields.items() if source
        }
        return RepaintJob.from_request(request, load, sources=sources, handoff=TaskHandoff(self.tasks, task.id, owner))

    def fall_back(self, task_id: str, owner: str) -> bool:
        return self.back_to_local is not None and self.back_to_local(task_id, owner)

    def sources(self, task: TaskView, request: CreateRequest) -> dict[str, str]:
        fields = {"reference_image": request.reference_image, "init_image": request.resolved_init_image()}
        return {
            field: self.forwardable(source, field, task.app_key, task.id) for field, source in fields.items() if source
        }


class TaskHandoff:
    """`Handoff` over the task store: the cloud task's id and wait estimate, written under our lease."""

    def __init__(self, tasks: TaskStore, task_id: str, owner: str):
        self._tasks = tasks
        self._task_id = task_id
        self._owner = owner
        row = tasks.get(task_id)  # a restarted worker follows the cloud task its task already has
        self.remote_id = row.remote_id if row is not None else None

    def remember(self, remote_id: str) -> None:
        self._tasks.remember_remote(self._task_id, self._owner, remote_id)
        self.remote_id = remote_id

    def report_wait(self, seconds: float) -> None:
        self._tasks.set_remote_wait(self._task_id, self._owner, seconds)
