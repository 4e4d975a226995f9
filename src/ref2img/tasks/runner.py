"""The task runner: one function that every `Worker` calls on a task it has claimed.

claimed task → fetch inputs → run the engine (progress, cancel, deadline between steps) → store
outputs → finish (status + callback outbox row, one transaction). Every failure ends the task with a
reason a user can act on; none escapes as a traceback. The one exception is the store failing under
the task: that is raised, and the task is run again once its lease expires.
"""

from __future__ import annotations

import errno
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ref2img.engines.base import Engine, EngineError, Job, JobCancelled, RemoteTimedOut, RemoteUnavailable
from ref2img.images import ImageInputError
from ref2img.protocol import ControlType, CreateRequest, RecognizeRequest, TaskStatus
from ref2img.tasks.cloud_route import CloudRoute, TaskHandoff
from ref2img.tasks.estimate import DurationEstimate
from ref2img.tasks.models import TaskRow
from ref2img.tasks.storage import Storage
from ref2img.tasks.store import StoreError
from ref2img.tasks.store.tasks import CLOUD, TaskStore

log = logging.getLogger("ref2img.runner")

PREVIEW_INTERVAL_S = 0.5  # step previews: the studio shows the image forming, about twice a second


@dataclass
class RunContext:
    tasks: TaskStore
    storage: Storage
    engine: Callable[[], Engine]  # the loaded engine; EngineError when it cannot load
    fetch_image: Callable[[str, str, str], Image.Image]  # (url, field, app_key) -> image
    estimate: DurationEstimate
    cloud: CloudRoute | None = None  # servers that forward tasks to the Tomoviee cloud


@dataclass(frozen=True)
class Outcome:
    status: TaskStatus
    seconds: float = 0.0  # the whole run, for a success
    steps: int = 0  # engine steps run
    step_seconds: float = 0.0  # from the first step to the last: the worker's step time


def run_task(task: TaskRow, owner: str, ctx: RunContext) -> Outcome:
    started = time.monotonic()
    stop: list[TaskStatus] = []
    last_progress = [-1]
    step_times: list[float] = []

    def on_progress(done: int, total: int) -> None:
        step_times.append(time.monotonic())
        percent = min(99, int(100 * done / max(total, 1)))  # 100 only once the images are stored
        if percent != last_progress[0]:
            last_progress[0] = percent
            ctx.tasks.set_progress(task.id, owner, percent)

    last_preview = [-PREVIEW_INTERVAL_S]

    def on_preview(done: int, total: int, render) -> None:
        # At most one preview a PREVIEW_INTERVAL_S: each is a storage write and a store update.
        if done < total and time.monotonic() - last_preview[0] >= PREVIEW_INTERVAL_S:
            last_preview[0] = time.monotonic()
            ctx.tasks.set_preview(task.id, owner, ctx.storage.save_preview(task.id, done, render()))

    def should_cancel() -> bool:
        verdict = ctx.tasks.should_stop(task.id, owner)
        if verdict is not None:
            stop.append(verdict)
        return verdict is not None

    def finish(status: TaskStatus, reason: str = "", result: list[str] | None = None) -> Outcome:
        ctx.tasks.finish(task.id, owner, status, result=result, reason=reason)
        return Outcome(status)

    try:
        names = (
            _recognize(task, ctx)
            if task.kind == "img2mask"
            else _generate(task, owner, ctx, on_progress, should_cancel, on_preview)
        )
    except StoreError:
        raise  # the store failed (locked, disk full, unreachable), not the task: it runs again after its lease
    except JobCancelled:
        verdict = stop[-1] if stop else TaskStatus.CANCELLED
        reason = "cancelled by the client" if verdict == TaskStatus.CANCELLED else "timed out while running"
        return finish(verdict, reason)
    except ImageInputError as exc:
        return finish(TaskStatus.FAILED, str(exc))
    except RemoteUnavailable as exc:
        # The cloud never took the task: a hybrid server runs it here instead (once: only this lease
        # owner can move it); a cloud-only server has nowhere else to run it.
        if ctx.cloud is not None and ctx.cloud.fall_back is not None and ctx.cloud.fall_back(task.id, owner):
            log.warning("task %s: %s; it runs on the local GPUs instead", task.id, exc)
            return Outcome(TaskStatus.QUEUED)
        return finish(TaskStatus.FAILED, str(exc))
    except RemoteTimedOut as exc:
        return finish(TaskStatus.TIMED_OUT, str(exc))
    except EngineError as exc:
        return finish(TaskStatus.FAILED, str(exc))
    except MemoryError:
        return finish(TaskStatus.FAILED, "the engine ran out of memory; try a smaller size or batch")
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            return finish(
                TaskStatus.FAILED, "the server's disk is full: the results could not be stored; try again later"
            )
        return finish(TaskStatus.FAILED, _incident(task))
    except Exception:  # noqa: BLE001 - the task must end; the traceback goes to the log, not the user
        return finish(TaskStatus.FAILED, _incident(task))
    elapsed = time.monotonic() - started
    ctx.estimate.add(elapsed)
    finish(TaskStatus.SUCCEEDED, result=names)
    return Outcome(
        TaskStatus.SUCCEEDED, elapsed, len(step_times), step_times[-1] - step_times[0] if step_times else 0.0
    )


def _incident(task: TaskRow) -> str:
    """Log the exception being handled under a short id, and give the user that id."""
    incident = secrets.token_hex(4)
    log.exception("task %s failed (incident %s)", task.id, incident)
    return f"internal error (incident {incident})"


def _generate(task: TaskRow, owner: str, ctx: RunContext, on_progress, should_cancel, on_preview) -> list[str]:
    request = CreateRequest.model_validate_json(task.request)

    def load(source: str, field: str) -> Image.Image:
        return ctx.fetch_image(source, field, task.app_key)

    if task.route == CLOUD:
        if ctx.cloud is None:
            raise EngineError("this task was routed to the Tomoviee cloud, and this worker has no cloud engine")
        # The inputs are still fetched and checked here: a bad image fails before any cloud credit is spent.
        job = Job.from_request(
            request, load, sources=ctx.cloud.sources(task, request), handoff=TaskHandoff(ctx.tasks, task, owner)
        )
        engine = ctx.cloud.engine()
    else:
        job, engine = Job.from_request(request, load), ctx.engine()
    images = engine.generate(job, on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview)
    return [ctx.storage.save_result(task.id, index, image) for index, image in enumerate(images)]


def _recognize(task: TaskRow, ctx: RunContext) -> list[str]:
    request = RecognizeRequest.model_validate(json.loads(task.request))
    image = ctx.fetch_image(request.init_image, "init_image", task.app_key)
    control_map = ctx.engine().recognize(image, ControlType(request.control_type))
    return [ctx.storage.save_result(task.id, 0, control_map)]
