"""The local backend: the diffusers engine in this process, one job at a time.

A job runs on the engine's own thread; the tool's coroutine watches it and reports its place in line,
then its steps. Jobs are kept in memory under task ids of their own (`get_task`, `cancel_task`);
a client that cancels its call, or `cancel_task`, stops the job between two denoising steps.
"""

from __future__ import annotations

import secrets
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ref2img.engines.base import Job, JobCancelled
from ref2img.mcp_server.inputs import InputGuard
from ref2img.mcp_server.results import Generated, Report, TaskState
from ref2img.protocol import ControlType, CreateRequest, TaskStatus

if TYPE_CHECKING:
    from PIL import Image

    from ref2img.engines.local import LocalEngine

WATCH_S = 0.1  # how often the tool looks at its job: progress reaches the client this fast


@dataclass
class _LocalJob:
    task_id: str
    status: TaskStatus = TaskStatus.QUEUED
    done: int = 0
    total: int = 0
    reason: str = ""
    files: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)

    def state(self, position: int | None) -> TaskState:
        progress = 100 if self.status == TaskStatus.SUCCEEDED else int(100 * self.done / max(self.total, 1))
        return TaskState(
            self.task_id,
            int(self.status),
            self.status.name.lower(),
            progress,
            position if self.status == TaskStatus.QUEUED else None,
            self.reason,
            self.files,
        )


class LocalBackend:
    name = "local"

    def __init__(self, engine_factory: Any, out_dir: Path, inputs: InputGuard):
        """`engine_factory()` builds the (unloaded) LocalEngine; it runs on the engine thread, once.
        Images are read through `inputs` (the allowed folders, the SSRF-guarded fetcher)."""
        self._engine_factory = engine_factory
        self._inputs = inputs
        self._engine: LocalEngine | None = None
        self.out_dir = out_dir
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ref2img-mcp-engine")
        self._jobs: dict[str, _LocalJob] = {}
        self._waiting: list[str] = []  # queued task ids, oldest first

    def _engine_now(self) -> LocalEngine:
        if self._engine is None:
            self._engine = self._engine_factory().load()
        return self._engine

    async def generate(self, request: CreateRequest, report: Report) -> Generated:
        job = self._new_job()
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        request = request.model_copy(update={"seed": seed})

        def run() -> list[str]:
            job.status = TaskStatus.PROCESSING
            work = Job.from_request(request, self._inputs.load)  # bad images fail before the model loads
            engine = self._engine_now()

            def on_progress(done: int, total: int) -> None:
                job.done, job.total = done, total

            images = engine.generate(work, on_progress=on_progress, should_cancel=job.cancel.is_set)
            return self._save(job.task_id, images)

        files = await self._watch(job, self._submit(job, run), report)
        return Generated(job.task_id, [Path(name) for name in files], [seed + i for i in range(len(files))])

    async def recognize(self, image: str, mode: ControlType, report: Report) -> Generated:
        job = self._new_job()

        def run() -> list[str]:
            job.status = TaskStatus.PROCESSING
            source = self._inputs.load(image, "image")
            control_map = self._engine_now().recognize(source, mode)
            return self._save(job.task_id, [control_map], suffix="control")

        files = await self._watch(job, self._submit(job, run), report)
        return Generated(job.task_id, [Path(name) for name in files], [])

    async def get_task(self, task_id: str) -> TaskState | None:
        job = self._jobs.get(task_id)
        return job.state(self._position(task_id)) if job else None

    async def cancel_task(self, task_id: str) -> TaskState | None:
        job = self._jobs.get(task_id)
        if job is None:
            return None
        job.cancel.set()
        if job.status == TaskStatus.QUEUED:
            job.status, job.reason = TaskStatus.CANCELLED, "cancelled by the client"
        return job.state(None)

    def close(self) -> None:
        for job in self._jobs.values():
            job.cancel.set()
        self._thread.shutdown(wait=False, cancel_futures=True)

    # -- running one job on the engine thread ---------------------------------------------------------
    def _new_job(self) -> _LocalJob:
        job = _LocalJob(task_id=f"local-{secrets.token_hex(8)}")
        self._jobs[job.task_id] = job
        self._waiting.append(job.task_id)
        return job

    def _submit(self, job: _LocalJob, run: Any) -> Future[list[str]]:
        def guarded() -> list[str]:
            self._waiting.remove(job.task_id)
            if job.cancel.is_set():
                raise JobCancelled("cancelled by the client")
            return run()

        return self._thread.submit(guarded)

    def _position(self, task_id: str) -> int | None:
        return self._waiting.index(task_id) if task_id in self._waiting else None

    async def _watch(self, job: _LocalJob, future: Future[list[str]], report: Report) -> list[str]:
        """Report place in line, then steps, until the job ends. If the tool call is cancelled (the
        client gave up), the job is told to stop, and stops at its next step."""
        last: tuple[Any, ...] = ()
        try:
            while not future.done():
                position = self._position(job.task_id)
                now = (job.status, position, job.done)
                if now != last:
                    last = now
                    if position is not None:
                        await report(0, 100, f"{job.task_id}: queued, {position} ahead")
                    elif job.total:
                        await report(job.done, job.total, f"{job.task_id}: step {job.done} of {job.total}")
                await anyio.sleep(WATCH_S)
        except BaseException:
            job.cancel.set()
            job.status, job.reason = TaskStatus.CANCELLED, "cancelled by the client"
            raise
        try:
            files = future.result()
        except JobCancelled:
            job.status, job.reason = TaskStatus.CANCELLED, "cancelled by the client"
            raise
        except Exception as exc:
            job.status, job.reason = TaskStatus.FAILED, str(exc)
            raise
        job.status, job.files = TaskStatus.SUCCEEDED, files
        return files

    def _save(self, task_id: str, images: list[Image.Image], suffix: str = "") -> list[str]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for index, image in enumerate(images):
            path = self.out_dir / f"{task_id}-{suffix or index + 1}.png"
            image.save(path)
            names.append(str(path))
        return names
