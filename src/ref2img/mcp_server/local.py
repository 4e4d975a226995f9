"""The local backend: the diffusers engine in this process, one task at a time, through the same
runner as a server's workers (`ref2img.lifecycle`), over an in-memory ledger.

A task runs on the engine's own thread; the tool's coroutine watches it and reports its place in
line, then its steps. `get_task` and `cancel_task` read and flag the ledger; a client that cancels
its call, or `cancel_task`, stops the task between two denoising steps.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ref2img.engines.base import EngineError
from ref2img.lifecycle import (
    GENERATE,
    RECOGNIZE,
    REPAINT,
    FolderOutputs,
    MemoryLedger,
    MemoryTask,
    Outcome,
    RunContext,
    run_task,
)
from ref2img.mcp_server.inputs import InputGuard
from ref2img.mcp_server.results import Generated, Report, TaskState
from ref2img.protocol import ControlType, CreateRequest, RecognizeRequest, RepaintRequest, TaskStatus

if TYPE_CHECKING:
    from pydantic import BaseModel

    from ref2img.engines.local import LocalEngine

WATCH_S = 0.1  # how often the tool looks at its task: progress reaches the client this fast
OWNER = "mcp-local"  # the one runner of this process


class LocalBackend:
    name = "local"

    def __init__(self, engine_factory: Any, out_dir: Path, inputs: InputGuard, provenance: dict | None = None):
        """`engine_factory()` builds the (unloaded) LocalEngine; it runs on the engine thread, once.
        Images are read through `inputs` (the allowed folders, the SSRF-guarded fetcher). `provenance`:
        the `RunContext`'s marks and content filter (cli._common.in_process_provenance)."""
        self._engine_factory = engine_factory
        self._engine: LocalEngine | None = None
        self.out_dir = out_dir
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ref2img-mcp-engine")
        self._ledger = MemoryLedger(prefix="local")
        self._context = RunContext(
            ledger=self._ledger,
            outputs=FolderOutputs(out_dir),
            engine=self._engine_now,
            load_image=lambda source, field, app_key: inputs.load(source, field),
            previews=False,
            on_step=self._ledger.set_steps,
            **(provenance or {}),
        )

    def _engine_now(self) -> LocalEngine:
        if self._engine is None:
            self._engine = self._engine_factory().load()
        return self._engine

    async def generate(self, request: CreateRequest, report: Report) -> Generated:
        request = request.with_seed()  # known before the task runs, so that the result can name it
        task = await self._run(request, report)
        seed = request.seed or 0
        return Generated(task.id, [Path(name) for name in task.result], [seed + i for i in range(len(task.result))])

    async def recognize(self, image: str, mode: ControlType, report: Report) -> Generated:
        task = await self._run(RecognizeRequest(control_type=mode, init_image=image), report, RECOGNIZE)
        return Generated(task.id, [Path(name) for name in task.result], [])

    async def repaint(self, request: RepaintRequest, report: Report) -> Generated:
        request = request.with_seed()
        task = await self._run(request, report, REPAINT)
        return Generated(task.id, [Path(name) for name in task.result], [request.seed or 0])

    async def get_task(self, task_id: str) -> TaskState | None:
        task = self._ledger.get(task_id)
        return _state(task, self._ledger.position(task_id)) if task else None

    async def cancel_task(self, task_id: str) -> TaskState | None:
        task = self._ledger.request_cancel(task_id)
        return _state(task, None) if task else None

    def close(self) -> None:
        self._ledger.cancel_all()
        self._thread.shutdown(wait=False, cancel_futures=True)

    async def _run(self, request: BaseModel, report: Report, kind: str = GENERATE) -> MemoryTask:
        task = self._ledger.add(request, kind)
        future = self._thread.submit(self._run_on_engine_thread, task.id)
        await self._watch(task, future, report)
        outcome = future.result()
        if outcome.status == TaskStatus.SUCCEEDED:
            return task
        raise EngineError(task.reason or task.status.label)  # the tool's error: the runner's reason, as a server's

    def _run_on_engine_thread(self, task_id: str) -> Outcome:
        task = self._ledger.claim(task_id)
        if task is None:  # cancelled while it waited
            return Outcome(TaskStatus.CANCELLED)
        return run_task(task, OWNER, self._context)

    async def _watch(self, task: MemoryTask, future: Future[Outcome], report: Report) -> None:
        """Report place in line, then steps, until the task ends. If the tool call is cancelled (the
        client gave up), the task is told to stop, and stops at its next step."""
        last: tuple[Any, ...] = ()
        try:
            while not future.done():
                position = self._ledger.position(task.id)
                now = (task.status, position, task.steps)
                if now != last:
                    last = now
                    done, total = task.steps
                    if position is not None:
                        await report(0, 100, f"{task.id}: queued, {position} ahead")
                    elif total:
                        await report(done, total, f"{task.id}: step {done} of {total}")
                    elif task.status == TaskStatus.PROCESSING:  # before the first step: the model, the maps
                        loading = "loading the model (the first job waits for it)" if self._engine is None else None
                        await report(0, 100, f"{task.id}: {loading or 'preparing the inputs'}")
                await anyio.sleep(WATCH_S)
        except BaseException:
            self._ledger.request_cancel(task.id)
            raise


def _state(task: MemoryTask, position: int | None) -> TaskState:
    return TaskState(
        task.id,
        int(task.status),
        task.status.name.lower(),
        task.progress,
        position if task.status == TaskStatus.QUEUED else None,
        task.reason,
        list(task.result),
    )
