"""The task runner: one function for every task, wherever it runs (a server's worker, `ref2img
generate`, `ref2img mcp`).

task → fetch inputs → run the engine (progress, previews, cancel and deadline between steps) → store
outputs → finish (one ledger call: the status, and on a server the callback's outbox row). Every
failure ends the task with a reason a user can act on; none escapes as a traceback. The one
exception is the ledger failing under the task (`LedgerError`): that is raised, and a server runs the
task again once its lease expires.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from ref2img.engines.base import (
    Engine,
    EngineError,
    EngineOptionError,
    Job,
    JobCancelled,
    RemoteTimedOut,
    RemoteUnavailable,
    RepaintJob,
)
from ref2img.images import ImageInputError
from ref2img.lifecycle.task import LOCAL, RECOGNIZE, REPAINT, Ledger, LedgerError, Outputs, RemoteRoute, TaskView
from ref2img.protocol import ControlType, CreateRequest, RecognizeRequest, RepaintRequest, TaskStatus
from ref2img.provenance.manifest import ImageFacts
from ref2img.provenance.marks import pixels_sha256

if TYPE_CHECKING:
    from ref2img.provenance.content_filter import ContentFilter

log = logging.getLogger("ref2img.runner")

PREVIEW_INTERVAL_S = 0.5  # step previews: the studio shows the image forming, about twice a second


@dataclass
class RunContext:
    ledger: Ledger
    outputs: Outputs
    engine: Callable[[], Engine]  # the loaded engine; EngineError when it cannot load
    load_image: Callable[[str, str, str], Image.Image]  # (url or path, field, app_key) -> image
    remote_routes: Mapping[str, RemoteRoute] = field(default_factory=dict)  # route name -> how it runs
    # The engine of the preset a request names (none: the default), held while the job runs; None: one
    # engine only (`engine`), which must then be the preset a request names.
    engine_for: Callable[[str | None], AbstractContextManager[Engine]] | None = None
    on_success: Callable[[float], None] | None = None  # the run's seconds (a server's duration estimate)
    previews: bool = True  # step previews to the outputs (in-process runs have no one to show them to)
    on_step: Callable[[str, int, int], None] | None = None  # (task id, steps done, in all): an observer here
    shape_job: Callable[[Job, Engine], Job] | None = None  # in-process options the wire has not (steps, a map)
    # True once the worker is stopping: the running job stops at its next step and goes back to the queue.
    stopping: Callable[[], bool] | None = None
    # (image, facts, the image it was made from when its other pixels must stay: Image Repaint) -> the PNG
    # bytes to store, with a watermark and a C2PA manifest, and what they carry (provenance/marks.py);
    # None: stored unmarked.
    marks: Callable[[Image.Image, ImageFacts, Image.Image | None], tuple[bytes, dict[str, Any]]] | None = None
    content: ContentFilter | None = None  # the optional content filter, for prompts and results


# Out of room, whatever says so: the device (ENOSPC) or the user's or project's quota (EDQUOT).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class ContentRefused(EngineError):
    """The content filter, in block mode, refused the prompt or an image: nothing is stored."""


@dataclass
class Stored:
    names: list[str]
    marks: dict[str, Any] = field(default_factory=dict)  # what the results carry; `flagged` with its reason


@dataclass(frozen=True)
class Outcome:
    status: TaskStatus
    seconds: float = 0.0  # the whole run, for a success
    steps: int = 0  # engine steps run
    step_seconds: float = 0.0  # from the first step to the last: the worker's step time
    result: list[str] = field(default_factory=list)  # the stored names, for a success
    reason: str = ""


def run_task(task: TaskView, owner: str, ctx: RunContext) -> Outcome:
    started = time.monotonic()
    stop: list[TaskStatus] = []
    last_progress = [-1]
    step_times: list[float] = []

    def on_progress(done: int, total: int) -> None:
        step_times.append(time.monotonic())
        if ctx.on_step is not None:
            ctx.on_step(task.id, done, total)
        percent = min(99, int(100 * done / max(total, 1)))  # 100 only once the images are stored
        if percent != last_progress[0]:
            last_progress[0] = percent
            ctx.ledger.set_progress(task.id, owner, percent)

    last_preview = [-PREVIEW_INTERVAL_S]

    def on_preview(done: int, total: int, render) -> None:
        # At most one preview a PREVIEW_INTERVAL_S: each is an outputs write and a ledger update.
        if done < total and time.monotonic() - last_preview[0] >= PREVIEW_INTERVAL_S:
            last_preview[0] = time.monotonic()
            ctx.ledger.set_preview(task.id, owner, ctx.outputs.save_preview(task.id, done, render()))

    def should_cancel() -> bool:
        verdict = ctx.ledger.should_stop(task.id, owner)
        if verdict is None and ctx.stopping is not None and ctx.stopping():
            verdict = TaskStatus.QUEUED  # not the client's doing: the task is given back, not ended
        if verdict is not None:
            stop.append(verdict)
        return verdict is not None

    def finish(
        status: TaskStatus, reason: str = "", result: list[str] | None = None, marks: dict[str, Any] | None = None
    ) -> Outcome:
        ctx.ledger.finish(task.id, owner, status, result=result, reason=reason, marks=marks)
        return Outcome(status, reason=reason)

    try:
        previews = on_preview if ctx.previews else None
        if task.kind == RECOGNIZE:
            stored = _recognize(task, ctx)
        elif task.kind == REPAINT:
            stored = _repaint(task, owner, ctx, on_progress, should_cancel, previews)
        else:
            stored = _generate(task, owner, ctx, on_progress, should_cancel, previews)
    except LedgerError:
        raise  # the ledger failed (locked, disk full, unreachable), not the task: it runs again after its lease
    except JobCancelled:
        verdict = stop[-1] if stop else TaskStatus.CANCELLED
        if verdict == TaskStatus.QUEUED:
            ctx.ledger.release(task.id, owner)
            log.info("task %s stopped at its step and went back to the queue: this worker is stopping", task.id)
            return Outcome(TaskStatus.QUEUED, reason="given back: the worker stopped")
        reason = "cancelled by the client" if verdict == TaskStatus.CANCELLED else "timed out while running"
        return finish(verdict, reason)
    except ImageInputError as exc:
        return finish(TaskStatus.FAILED, str(exc))
    except RemoteUnavailable as exc:
        # The remote service never took the task: a hybrid server runs it here instead (once: only this
        # lease owner can move it); a cloud-only server has nowhere else to run it.
        route = ctx.remote_routes.get(task.route)
        if route is not None and route.fall_back(task.id, owner):
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
        if exc.errno in DISK_FULL:
            return finish(TaskStatus.FAILED, "the disk is full: the results could not be stored; try again later")
        return finish(TaskStatus.FAILED, _incident(task))
    except Exception:  # noqa: BLE001 - the task must end; the traceback goes to the log, not the user
        return finish(TaskStatus.FAILED, _incident(task))
    elapsed = time.monotonic() - started
    if ctx.on_success is not None:
        ctx.on_success(elapsed)
    finish(TaskStatus.SUCCEEDED, result=stored.names, marks=stored.marks or None)
    return Outcome(
        TaskStatus.SUCCEEDED,
        elapsed,
        len(step_times),
        step_times[-1] - step_times[0] if step_times else 0.0,
        result=stored.names,
    )


def _incident(task: TaskView) -> str:
    """Log the exception being handled under a short id, and give the user that id."""
    incident = secrets.token_hex(4)
    log.exception("task %s failed (incident %s)", task.id, incident)
    return f"internal error (incident {incident})"


def _generate(task: TaskView, owner: str, ctx: RunContext, on_progress, should_cancel, on_preview) -> Stored:
    request = CreateRequest.model_validate_json(task.request)
    flags = _check_prompt(task, ctx, request.prompt, request.negative_prompt)
    load, inputs = _loader(task, ctx)

    remote = _remote_route(task, ctx)
    if remote is not None:
        # The inputs are still fetched and checked here: a bad image fails before the remote service is paid.
        job = remote.job(task, owner, request, load)
        images = remote.engine().generate(
            job, on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview
        )
        facts = _facts(task, request.prompt, remote.engine(), inputs)
    else:
        with _engine(ctx, request.model) as engine:
            job = Job.from_request(request, load)
            if ctx.shape_job is not None:
                job = ctx.shape_job(job, engine)
            images = engine.generate(job, on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview)
            facts = _facts(task, request.prompt, engine, inputs)
    return _store(task, ctx, images, facts, flags)


@contextlib.contextmanager
def _engine(ctx: RunContext, model: str | None = None) -> Iterator[Engine]:
    """The engine of the preset a request names (none: the default), held while the job runs. A request
    never runs on another preset than the one it names: a single engine of another name is refused."""
    if ctx.engine_for is not None:
        with ctx.engine_for(model) as engine:
            yield engine
        return
    engine = ctx.engine()
    preset = getattr(getattr(engine, "preset", None), "name", None)
    if model is not None and preset is not None and model != preset:
        raise EngineOptionError(f"model: {model!r} is not the preset this engine runs ({preset})")
    yield engine


def _repaint(task: TaskView, owner: str, ctx: RunContext, on_progress, should_cancel, on_preview) -> Stored:
    request = RepaintRequest.model_validate_json(task.request)
    flags = _check_prompt(task, ctx, request.prompt)
    load, inputs = _loader(task, ctx)

    remote = _remote_route(task, ctx)
    if remote is not None:
        job = remote.repaint_job(task, owner, request, load)
        images = remote.engine().repaint(
            job, on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview
        )
        facts = _facts(task, request.prompt, remote.engine(), inputs)
    else:
        with _engine(ctx) as engine:
            job = RepaintJob.from_request(request, load)
            images = engine.repaint(job, on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview)
            facts = _facts(task, request.prompt, engine, inputs)
    return _store(task, ctx, images, facts, flags, unchanged=job.image)  # unmasked pixels stay as sent


def _loader(task: TaskView, ctx: RunContext) -> tuple[Callable[[str, str], Image.Image], dict[str, str]]:
    """The task's image loader, and the inputs' pixel hashes it keeps (the manifest's ingredients) when
    the results are marked."""
    inputs: dict[str, str] = {}

    def load(source: str, field: str) -> Image.Image:
        image = ctx.load_image(source, field, task.app_key)
        if ctx.marks is not None:
            inputs[field] = pixels_sha256(image)
        return image

    return load, inputs


def _check_prompt(task: TaskView, ctx: RunContext, *texts: str | None) -> list[str]:
    """The content filter's word on the prompts: ContentRefused in block mode, the reason in flag mode."""
    verdict = ctx.content.check_prompt(task.app_key, *texts) if ctx.content is not None else None
    if verdict is None:
        return []
    if verdict.action == "block":
        raise ContentRefused(verdict.reason)
    return [verdict.reason]


def _facts(task: TaskView, prompt: str, engine: Engine, inputs: dict[str, str]) -> ImageFacts:
    """What the results' manifest states: the preset and its models as the engine ran them."""
    preset = getattr(engine, "preset", None)
    models = tuple(
        ref.source for ref in (getattr(preset, "base", None), getattr(preset, "lora", None)) if ref is not None
    )
    return ImageFacts(
        task_id=task.id,
        kind=task.kind,
        prompt_sha256=hashlib.sha256(prompt.encode()).hexdigest(),
        preset=getattr(preset, "name", None) or getattr(engine, "name", None),
        models=models,
        inputs=dict(inputs),
    )


def _store(
    task: TaskView,
    ctx: RunContext,
    images: list[Image.Image],
    facts: ImageFacts,
    flags: list[str],
    unchanged: Image.Image | None = None,
) -> Stored:
    """Check every image with the content filter first (block: none is stored), then mark and store each."""
    if ctx.content is not None:
        for image in images:
            verdict = ctx.content.check_image(task.app_key, image)
            if verdict is not None and verdict.action == "block":
                raise ContentRefused(verdict.reason)
            if verdict is not None:
                flags.append(verdict.reason)
    names: list[str] = []
    marks: dict[str, Any] = {}
    if ctx.marks is not None:
        from ref2img.provenance.watermark import new_mark_id  # numpy: only where images are marked

        facts = dataclasses.replace(facts, watermark=new_mark_id())  # one id for all the task's images
    try:
        for index, image in enumerate(images):
            data = None
            if ctx.marks is not None:
                data, marks = ctx.marks(image, facts, unchanged)
            names.append(ctx.outputs.save_result(task.id, index, image, data))
    except OSError:
        ctx.outputs.discard(names)  # a task keeps all of its images or none: no orphans on a full disk
        raise
    if flags:
        marks["flagged"] = "; ".join(dict.fromkeys(flags))
    return Stored(names, marks)


def _remote_route(task: TaskView, ctx: RunContext) -> RemoteRoute | None:
    remote = ctx.remote_routes.get(task.route)
    if remote is None and task.route != LOCAL:
        raise EngineError(f"this task was routed to {task.route!r}, and this worker has no engine for that route")
    return remote


def _recognize(task: TaskView, ctx: RunContext) -> Stored:
    request = RecognizeRequest.model_validate(json.loads(task.request))
    image = ctx.load_image(request.init_image, "init_image", task.app_key)
    with _engine(ctx) as engine:
        control_map = engine.recognize(image, ControlType(request.control_type))
    return Stored([ctx.outputs.save_result(task.id, 0, control_map)])  # a control map: not a generated image
