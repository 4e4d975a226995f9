"""The remote backends: a ref2img server or the Tomoviee cloud, through the SDK's `AsyncClient`.

The task runs there; this side follows it (its place in the queue, then its progress), downloads
the full-size images into the output folder, and cancels the task there when the client gives up.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import anyio

from ref2img.client import AsyncClient, Task, UnsupportedError
from ref2img.mcp_server.inputs import InputGuard
from ref2img.mcp_server.results import Generated, Report, TaskState
from ref2img.protocol import ControlType, CreateRequest, RepaintRequest, TaskStatus

WAIT_S = 1800.0  # the longest a tool call follows one task


class RemoteBackend:
    def __init__(self, client: AsyncClient, out_dir: Path, name: str, inputs: InputGuard):
        self._client = client
        self._inputs = inputs
        self.out_dir = out_dir
        self.name = name  # "server" or "cloud"

    async def generate(self, request: CreateRequest, report: Report) -> Generated:
        # A seed is always sent, so that every image's seed is known and can be asked for again.
        request = request.with_seed()
        images = [("reference_image", request.reference_image), ("init_image", request.init_image)]
        images += [(f"controls[{i}].image", control.image) for i, control in enumerate(request.controls or ())]
        # every local file read here, within the allowed folders; the SDK uploads the bytes
        uploads = {
            field: await self._local_bytes(source, field)
            for field, source in images
            if source is not None and self._inputs.is_local_file(source)
        }
        task_id = await self._client.submit(request, uploads=uploads)
        task = await self._follow(task_id, report)
        files = await self._client.download(task, self.out_dir)
        seed = request.seed or 0
        return Generated(task_id, files, [seed + i for i in range(len(files))], task.images)

    async def recognize(self, image: str, mode: ControlType, report: Report) -> Generated:
        task = await self._client.recognize(await self._local_bytes(image, "image"), mode, timeout=WAIT_S)
        files = await self._client.download(task, self.out_dir)
        return Generated(task.task_id, files, [], task.masks)

    async def repaint(self, request: RepaintRequest, report: Report) -> Generated:
        request = request.with_seed()
        uploads = {
            field: await self._local_bytes(source, field)
            for field, source in (("init_image", request.init_image), ("mask_url", request.mask_url))
            if source is not None and self._inputs.is_local_file(source)
        }
        task_id = await self._client.submit_repaint(request, uploads=uploads)
        task = await self._follow(task_id, report)
        files = await self._client.download(task, self.out_dir)
        return Generated(task_id, files, [request.seed or 0], task.images)

    async def get_task(self, task_id: str) -> TaskState | None:
        return _state(await self._client.get(task_id))

    async def cancel_task(self, task_id: str) -> TaskState | None:
        return _state(await self._client.cancel(task_id))

    def close(self) -> None:
        pass  # the client is closed by whoever opened it

    async def _local_bytes(self, source: str, field: str) -> str | bytes:
        """A local path becomes its bytes (read within the allowed folders), which the SDK uploads;
        URLs and data URIs go as they are: the server or the cloud fetches them with its own guard."""
        if not self._inputs.is_local_file(source):
            return source
        return await anyio.to_thread.run_sync(self._inputs.read, source, field)

    async def _follow(self, task_id: str, report: Report) -> Task:
        async def on_progress(task: Task) -> None:
            if task.status == TaskStatus.QUEUED:
                await report(0, 100, f"{task_id}: queued, {task.position or 0} ahead")
            elif task.status == TaskStatus.PROCESSING:
                await report(task.progress, 100, f"{task_id}: generating, {task.progress}%")

        try:
            return await self._client.wait(task_id, timeout=WAIT_S, on_progress=on_progress)
        except anyio.get_cancelled_exc_class():
            # The client gave up: so does the task there (the cloud cannot cancel: it is abandoned).
            with anyio.CancelScope(shield=True), contextlib.suppress(UnsupportedError):
                await self._client.cancel(task_id)
            raise


def _state(task: Task) -> TaskState:
    return TaskState(
        task.task_id,
        int(task.status),
        task.status.name.lower(),
        task.progress,
        task.position,
        task.reason,
        urls=task.images or task.masks,
    )
