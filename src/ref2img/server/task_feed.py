"""Our extensions for people watching their tasks (the studio uses them; any client may):

- `GET /v1/tasks`: the signed-in key's tasks, newest first, paged, with the settings each was asked with;
- `GET /v1/tasks/{task_id}/events`: Server-Sent Events, one `task` event (the query's `data`) each time
  the task changes, until it ends. The long-poll query keeps working as before.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ref2img.protocol import MAX_TASK_ID_CHARS, ErrorCode, TaskStatus, text_problem
from ref2img.server import openapi
from ref2img.server.auth import AppKey
from ref2img.server.errors import ApiError, ok
from ref2img.server.services import Svc, store_read
from ref2img.server.views import task_summary

router = APIRouter(tags=["extensions"])
KEEPALIVE_S = 15.0  # an unchanged task is sent again this often, so that proxies keep the stream open
MAX_PAGE_SIZE = 100
MAX_PAGE_BYTES = 2 * 1024 * 1024  # a page stops before this many bytes of JSON (at least one task)


@router.get("/v1/tasks", responses=openapi.ENVELOPE_RESPONSES)
async def list_tasks(
    request: Request,
    svc: Svc,
    app_key: AppKey,
    page: Annotated[int, Query(ge=1, le=10**6, description="1 is the newest")] = 1,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 20,
    offset: Annotated[
        int | None, Query(ge=0, le=10**8, description="start here instead of at the page (see next_offset)")
    ] = None,
) -> dict[str, Any]:
    """This key's tasks, newest first: each one's query `data`, kind, times and settings. A page holds
    at most `page_size` tasks and about 2 MB; `next_offset` is where the next one starts."""
    base_url = str(request.base_url)
    start = offset if offset is not None else (page - 1) * page_size

    def read() -> dict[str, Any]:
        tasks: list[dict[str, Any]] = []
        size = 0
        for row in svc.store.tasks.each_for_key(app_key, start, page_size):
            summary = task_summary(row, svc.task_data(row, base_url))
            size += len(json.dumps(summary, ensure_ascii=False).encode())  # as the answer is sent
            if tasks and size > MAX_PAGE_BYTES:
                break
            tasks.append(summary)
        total = svc.store.tasks.count_for_key(app_key)
        return {
            "tasks": tasks,
            "page": page,
            "page_size": page_size,
            "total": total,
            "next_offset": start + len(tasks),
        }

    return ok(await store_read(svc, read))


@router.get(
    "/v1/tasks/{task_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: a `task` event with the query's `data` at each change; a "
            "task_id of the wrong length is answered in the envelope (680001) as on every route",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}},
                "application/json": {"schema": {"$ref": "#/components/schemas/Envelope"}},
            },
        },
        400: {"description": "680001: the task_id holds a character no task id has", "model": openapi.Envelope},
        404: {"description": "680004: no such task for this key", "model": openapi.Envelope},
        **{status: openapi.ENVELOPE_RESPONSES[status] for status in (401, 429)},
    },
)
async def task_events(
    request: Request,
    svc: Svc,
    task_id: Annotated[str, Path(min_length=1, max_length=MAX_TASK_ID_CHARS)],
    app_key: AppKey,
) -> StreamingResponse:
    """Status, progress, queue position and step preview of one task, as they change, until it ends."""
    if text_problem(task_id):
        raise ApiError(ErrorCode.INVALID_PARAMETER, f"task_id: {text_problem(task_id)}", 400)
    base_url = str(request.base_url)

    def read() -> dict[str, Any] | None:
        task = svc.store.tasks.get(task_id, app_key)
        return svc.task_data(task, base_url) if task is not None else None

    first = await store_read(svc, read)
    if first is None:
        raise ApiError(ErrorCode.TASK_NOT_FOUND, f"task_id: no task {task_id!r}", 404)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold the events back
    return StreamingResponse(_changes(request, svc, read, first), media_type="text/event-stream", headers=headers)


async def _changes(request: Request, svc: Any, read, data: dict[str, Any]) -> AsyncIterator[str]:
    sent_at = time.monotonic()
    yield _event(data)
    while not TaskStatus(data["status"]).is_final and not await request.is_disconnected():
        seen = svc.store.tasks.changes.version
        await svc.store.tasks.changes.wait_async(seen, 1.0)  # local changes wake it; 1 s catches other nodes'
        # Off the event loop even on SQLite: fifty open streams reading inline each second held up
        # every other request (/healthz went from 0.07 s to seconds).
        now = await run_in_threadpool(read)
        if now is None:
            return
        if _changed(now, data) or time.monotonic() - sent_at > KEEPALIVE_S:
            data, sent_at = now, time.monotonic()
            yield _event(data)


def _event(data: dict[str, Any]) -> str:
    """One Server-Sent Event (the HTML standard's format): the task's `data` as JSON, on one line."""
    return f"event: task\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _changed(now: dict[str, Any], before: dict[str, Any]) -> bool:
    """Anything a watcher sees changed (a preview's signed URL differs at every read: its path is compared)."""
    keys = ("status", "progress", "position", "reason")
    return any(now[key] != before[key] for key in keys) or _path(now) != _path(before)


def _path(data: dict[str, Any]) -> str:
    return str(data.get("preview", "")).split("?")[0]
