"""Every route of the wire protocol (DESIGN.md §1) plus our extensions."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from ref2img.images import ImageInputError, probe_image
from ref2img.lifecycle import GENERATE, RECOGNIZE, REPAINT
from ref2img._version import __version__
from ref2img.protocol import (
    BATCH_SIZE_RANGE,
    CONTROL_MODES,
    INTENSITY_RANGE,
    MAX_CONTROLS,
    MAX_PROMPT_CHARS,
    GUIDANCE_RANGE,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    ControlType,
    MAX_TASK_ID_CHARS,
    MAX_WAIT_S,
    CreateRequest,
    ErrorCode,
    ParameterError,
    RecognizeRequest,
    RepaintRequest,
    TaskStatus,
    basic_token,
    parse_create_request,
    parse_recognize_request,
    parse_repaint_request,
    text_problem,
)
from ref2img.server import openapi
from ref2img.server.auth import AppKey, check_secret
from ref2img.server.errors import ApiError, ok
from ref2img.server.routing import route_generation, route_local, route_recognition
from ref2img.safe_http import UrlRefused
from ref2img.server.services import Services
from ref2img.tasks.inputs import IMAGE_FIELDS
from ref2img.tasks.store import IdempotencyMismatch, QueueFull, Quota, QuotaExceeded, StoreBusy, new_id
from ref2img.tasks.store.models import TaskRow

router = APIRouter()
Seeded = TypeVar("Seeded", CreateRequest, RepaintRequest)
WIRE: dict[str, Any] = {"responses": openapi.ENVELOPE_RESPONSES, "response_model": None}  # see openapi.py


def services(request: Request) -> Services:
    return request.app.state.services


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()  # over max_body_bytes: 680001 "body: …" from limits.BodyLimit
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be a JSON object")
    return body


async def store_read(svc: Services, read):
    """Run a read of the store. SQLite in WAL mode answers reads from the local file without ever
    waiting for a writer, in about 0.1 ms: cheaper inline than a hop to the thread pool (2x the
    query throughput). A networked store (PostgreSQL) is read off the event loop."""
    if svc.store.is_sqlite:
        return read()
    return await run_in_threadpool(read)


def _parameter_error(exc: ParameterError) -> ApiError:
    return ApiError(ErrorCode.INVALID_PARAMETER, str(exc))


def _check_inputs(svc: Services, app_key: str, images: dict[str, str | None], callback: str | None) -> None:
    for field, url in images.items():
        if url is not None:
            try:
                svc.images.check(url, field, app_key)
            except ImageInputError as exc:
                raise ApiError(exc.code, str(exc)) from None
    if callback is not None:
        try:
            svc.http.check(callback)
        except UrlRefused as exc:
            raise ApiError(ErrorCode.INVALID_PARAMETER, f"callback: {exc}") from None


def _quota(svc: Services, app_key: str) -> Quota | None:
    row = svc.store.keys.get(app_key)
    if row is None or (row.max_concurrent is None and row.per_minute is None):
        return None
    return Quota(max_concurrent=row.max_concurrent, per_minute=row.per_minute)


def _busy(exc: QueueFull | QuotaExceeded) -> ApiError:
    return ApiError(ErrorCode.BUSY, f"busy: {exc}", 429, {"Retry-After": str(exc.retry_after)})


def check_admission(svc: Services, app_key: str) -> None:
    """Refuse now what `_enqueue` would (the queue, the key's share and quota): a way in that stores files
    for the task first (the OpenAI route's uploads) asks this before it stores anything."""
    try:
        svc.store.tasks.check_admission(app_key, svc.settings.queue_limit, svc.settings.key_share, _quota(svc, app_key))
    except (QueueFull, QuotaExceeded) as exc:
        raise _busy(exc) from None


def _enqueue(
    svc: Services,
    request: Request,
    app_key: str,
    kind: str,
    payload: dict,
    params: str | None,
    callback: str | None,
    route: str,
    preset: str | None = None,
) -> TaskRow:
    """Store and queue one task (or find the one this Idempotency-Key already made)."""
    engine = svc.engine.state
    if svc.settings.embedded and engine.failed:
        svc.engine.preload()  # try again in the background: the model may have been fetched since
        raise ApiError(ErrorCode.ENGINE_UNAVAILABLE, f"engine unavailable: {engine.error}")
    payload = _inline_images_kept(svc, request, app_key, payload)
    try:
        task, created = svc.store.tasks.create_idempotent(
            app_key=app_key,
            kind=kind,
            request=payload,
            params=params,
            callback=callback,
            idempotency_key=_idempotency_key(request),
            timeout_s=svc.settings.task_timeout_s,
            queue_limit=svc.settings.queue_limit,
            key_queue_limit=svc.settings.key_share,
            quota=_quota(svc, app_key),
            route=route,
            preset=preset,
        )
    except (QueueFull, QuotaExceeded) as exc:
        raise _busy(exc) from None
    except IdempotencyMismatch:
        raise ApiError(
            ErrorCode.INVALID_PARAMETER,
            "Idempotency-Key: already used with a different request body; send a new key for a new request",
        ) from None
    if created:
        svc.queue.send(task.id, task.route, task.preset)
    return task


def _inline_images_kept(svc: Services, request: Request, app_key: str, payload: dict) -> dict:
    """The task's `data:` images kept as files of the key's, the row naming them (tasks/inputs.py), after
    the checks that could still refuse the task: nothing is stored for a refused one. A resend under an
    Idempotency-Key that already made its task is let through to find it."""
    if not _has_inline(payload):
        return payload
    key = _idempotency_key(request)
    if key is None or svc.store.tasks.by_idempotency_key(app_key, key) is None:
        check_admission(svc, app_key)
    return svc.images.keep_inline(payload, app_key)


def _has_inline(payload: dict) -> bool:
    fields = [payload.get(field) for field in IMAGE_FIELDS]
    fields += [control.get("image") for control in payload.get("controls") or () if isinstance(control, dict)]
    return any(isinstance(value, str) and value.startswith("data:") for value in fields)


def submit_generation(svc: Services, request: Request, app_key: str, create: CreateRequest) -> tuple[str, int]:
    """Accept one generation, as every way in does (Tomoviee's route, the OpenAI face): its images checked
    at the door, routed, its seed decided. Returns the task id and the seed of image 1."""
    create = _with_preset(svc, create)
    images = {"reference_image": create.reference_image, "init_image": create.init_image}
    control_images = {f"controls[{i}].image": c.image for i, c in enumerate(create.controls or ()) if c.image}
    _check_inputs(svc, app_key, {**images, **control_images}, create.callback)
    default = svc.offered_presets()[1]
    other_preset = create.model not in (None, default)  # only the local GPUs hold it
    local = create.local_only or other_preset
    preset = None if svc.settings.cloud_only else (create.model or default)
    route = route_local(svc, create) if local else route_generation(svc, app_key, images, preset)
    create = _seeded(request, app_key, create)
    payload = create.model_dump(mode="json")
    task = _enqueue(svc, request, app_key, GENERATE, payload, create.params, create.callback, route, preset)
    assert create.seed is not None  # with_seed
    return task.id, create.seed


def _seeded(request: Request, app_key: str, wanted: Seeded) -> Seeded:
    """The request with its seed decided here and stored with the task: a rerun after a crash makes the
    same images, and a resend under the same Idempotency-Key asks for the same seed (so it matches)."""
    key = _idempotency_key(request)
    return wanted.with_seed(derived_from=f"{app_key}\n{key}" if key else None)


def _with_preset(svc: Services, create: CreateRequest) -> CreateRequest:
    """The preset a request names must be one this server offers, and its LoRAs ones of its folders; a
    server of several presets names its default in the task, so that its settings say which made it."""
    names, default = svc.offered_presets()
    if default is None and not svc.settings.cloud_only:
        raise ApiError(
            ErrorCode.ENGINE_UNAVAILABLE,
            "engine unavailable: no live worker advertises a preset yet (this API node, started without "
            "--model, offers what its workers hold); retry once a `ref2img worker` has started",
        )
    if create.model is not None and create.model not in names:
        raise ApiError(
            ErrorCode.INVALID_PARAMETER,
            f"model: {create.model[:100]!r} is not a preset of this server; it offers {', '.join(names)}",
        )
    problem = svc.backend.loras_problem(create.loras)
    if problem is not None:
        raise ApiError(ErrorCode.INVALID_PARAMETER, problem)
    if create.model is None and (len(names) > 1 or svc.settings.follow_workers):
        return create.model_copy(update={"model": default})
    return create


def submit_repaint(svc: Services, request: Request, app_key: str, repaint: RepaintRequest) -> tuple[str, int]:
    """Accept one Image Repaint, as `submit_generation` does a generation."""
    images = {"init_image": repaint.init_image, "mask_url": repaint.mask_url}
    _check_inputs(svc, app_key, images, repaint.callback)
    route = route_generation(svc, app_key, images)
    repaint = _seeded(request, app_key, repaint)
    payload = repaint.model_dump(mode="json")
    task = _enqueue(svc, request, app_key, REPAINT, payload, repaint.params, repaint.callback, route)
    assert repaint.seed is not None  # with_seed
    return task.id, repaint.seed


@router.post(
    "/v1/open/capacity/application/tm_reference_img2img", openapi_extra=openapi.json_body(CreateRequest), **WIRE
)
def create_img2img(request: Request, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> JSONResponse:
    svc = services(request)
    try:
        create = parse_create_request(body)
    except ParameterError as exc:
        raise _parameter_error(exc) from None
    task_id, seed = submit_generation(svc, request, app_key, create)
    # `seed` is our extension: the seed of image 1 (image k: seed + k - 1)
    return JSONResponse(ok({"task_id": task_id, "seed": seed}))


@router.post(
    "/v1/open/capacity/application/tm_reference_img2mask", openapi_extra=openapi.json_body(RecognizeRequest), **WIRE
)
def create_img2mask(request: Request, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> JSONResponse:
    svc = services(request)
    try:
        recognize = parse_recognize_request(body)
    except ParameterError as exc:
        raise _parameter_error(exc) from None
    _check_inputs(svc, app_key, {"init_image": recognize.init_image}, recognize.callback)
    route = route_recognition(svc)
    payload = recognize.model_dump(mode="json")
    task = _enqueue(svc, request, app_key, RECOGNIZE, payload, recognize.params, recognize.callback, route)
    return JSONResponse(ok({"task_id": task.id}))


@router.post("/v1/open/capacity/application/tm_redrawing", openapi_extra=openapi.json_body(RepaintRequest), **WIRE)
def create_redrawing(request: Request, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> JSONResponse:
    """Image Repaint (inpainting): the masked area of `init_image` redrawn from `prompt`."""
    svc = services(request)
    try:
        repaint = parse_repaint_request(body)
    except ParameterError as exc:
        raise _parameter_error(exc) from None
    task_id, seed = submit_repaint(svc, request, app_key, repaint)
    return JSONResponse(ok({"task_id": task_id, "seed": seed}))


def _task_id(body: dict) -> str:
    task_id = body.get("task_id")
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID_CHARS or text_problem(task_id):
        raise ApiError(
            ErrorCode.INVALID_PARAMETER,
            f"task_id: must be a non-empty string of at most {MAX_TASK_ID_CHARS} characters",
        )
    return task_id


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "Idempotency-Key: must be 1 to 255 characters")
    return key


def _wait_seconds(body: dict) -> float:
    wait = body.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
        raise ApiError(ErrorCode.INVALID_PARAMETER, f"wait: must be a number of seconds from 0 to {MAX_WAIT_S:.0f}")
    return float(wait)


@router.post("/v1/open/pub/task", openapi_extra=openapi.json_body(openapi.TaskLookup), **WIRE)
async def query_task(request: Request, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> JSONResponse:
    """Task state; with `wait` (≤ 30 s) it answers as soon as the status changes (DESIGN.md §1)."""
    svc = services(request)
    task_id, wait = _task_id(body), _wait_seconds(body)
    base_url = str(request.base_url)

    def read() -> tuple[Any, dict | None]:  # one trip to the thread pool per look at the store
        task = svc.store.tasks.get(task_id, app_key)
        return task, (svc.task_data(task, base_url) if task is not None else None)

    deadline = time.monotonic() + wait
    seen = svc.store.tasks.changes.version
    task, data = await store_read(svc, read)
    if task is None:
        raise ApiError(ErrorCode.TASK_NOT_FOUND, f"task_id: no task {task_id!r}")
    first = task.status
    while wait and not TaskStatus(task.status).is_final and time.monotonic() < deadline:
        # The feed wakes us on local changes; the 1 s cap also catches other processes' changes.
        seen = await svc.store.tasks.changes.wait_async(seen, min(1.0, deadline - time.monotonic()))
        task, data = await store_read(svc, read)
        if task.status != first:
            break
    return JSONResponse(ok(data))


@router.post("/v1/open/pub/task/cancel", openapi_extra=openapi.json_body(openapi.TaskRef), **WIRE)
def cancel_task(request: Request, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> dict:
    svc = services(request)
    task_id = _task_id(body)
    task = svc.store.tasks.request_cancel(task_id, app_key)
    if task is None:
        raise ApiError(ErrorCode.TASK_NOT_FOUND, f"task_id: no task {task_id!r}")
    return ok(svc.task_data(task, str(request.base_url)))


@router.get("/v1/open/capacity/get/token", **WIRE)
async def get_token(
    request: Request, access_key: Annotated[str, Query()] = "", secret: Annotated[str, Query()] = ""
) -> dict:
    if not access_key or not secret:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "access_key and secret: both are required query parameters")
    verifier = services(request).verifier
    await check_secret(
        request,
        access_key,
        lambda: verifier.verify(access_key, secret),
        ApiError(ErrorCode.UNAUTHORIZED, "unauthorized: unknown app key or wrong secret", 401),
    )
    return ok({"access_token": basic_token(access_key, secret)})


@router.post("/v1/files", **WIRE)
def upload_file(request: Request, app_key: AppKey, file: Annotated[UploadFile, File()]) -> dict:
    svc = services(request)
    data = file.file.read(svc.settings.max_body_bytes + 1)
    file_id, url = store_upload(svc, str(request.base_url), app_key, data, "file")
    return ok({"file_id": file_id, "url": url})


def store_upload(svc: Services, base_url: str, app_key: str, data: bytes, field: str) -> tuple[str, str]:
    """Keep an uploaded image as this key's file: its id, and a signed URL that tasks of this key take as
    an image. What no task could use is refused now, in bounded memory (images.probe_image)."""
    _check_upload_rate(svc, app_key)
    try:
        image_format = probe_image(data, field, svc.images.max_bytes)
    except ImageInputError as exc:
        raise ApiError(exc.code, str(exc)) from None
    extension = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif"}[image_format]
    file_id = new_id("f")
    try:
        name = svc.storage.save_upload(file_id, data, extension)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise StoreBusy("the server's disk is full") from exc  # 680005 / 429, as a full database answers
    svc.store.files.add(file_id, app_key, name)
    return file_id, svc.storage.signed_url(base_url, name)


# The most images one task names (a reference, an init image, each control's map): a key's uploads a
# minute are capped at this many for each task its quota lets it create a minute.
IMAGES_A_TASK = 2 + MAX_CONTROLS


def _check_upload_rate(svc: Services, app_key: str) -> None:
    """Uploads count against the key's quota: with `--per-minute N`, at most IMAGES_A_TASK x N a minute."""
    row = svc.store.keys.get(app_key)
    if row is None or row.per_minute is None:
        return
    allowed = row.per_minute * IMAGES_A_TASK
    recent = svc.store.files.uploaded_since(app_key, time.time() - 60)
    if recent >= allowed:
        raise ApiError(
            ErrorCode.BUSY,
            f"busy: this key uploaded {recent} files in the last minute, its limit ({allowed} a minute: "
            f"{IMAGES_A_TASK} for each of its {row.per_minute} tasks a minute); retry in 60 s",
            429,
            {"Retry-After": "60"},
        )


_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


@router.get("/v1/files/{name:path}", include_in_schema=False)
def get_file(request: Request, name: str, expires: str = "", sig: str = "") -> Response:
    storage = services(request).storage
    if not storage.check_signature(name, expires, sig):
        raise ApiError(ErrorCode.TASK_NOT_FOUND, "file: the link is invalid or has expired", 404)
    try:
        data = storage.read(name)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(ErrorCode.TASK_NOT_FOUND, "file: not found", 404) from None
    media_type = _MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/healthz", **WIRE)
def healthz(request: Request) -> dict:
    svc = services(request)
    counts = svc.store.tasks.count_by_status()
    engine = str(svc.engine.state) if svc.settings.embedded else "workers"
    return ok(
        {
            "status": "ok",
            "engine": engine,
            "queued": counts.get(TaskStatus.QUEUED, 0),
            "processing": counts.get(TaskStatus.PROCESSING, 0),
        }
    )


@router.get("/v1/info", **WIRE)
def info(request: Request, app_key: AppKey) -> dict:
    """What this server runs and what a request may ask, from `protocol.py`: the preset, the modes and
    statuses in words, every range. Pages and clients read it rather than spell it again."""
    svc = services(request)
    default = svc.offered_presets()[1]
    following = svc.settings.follow_workers
    return ok(
        {
            "version": __version__,
            "engine": svc.settings.engine,
            # An API node that follows its workers: the preset most of them hold (None while none lives).
            "preset": (None if default is None else svc.backend.preset_summary(default))
            if following
            else svc.backend.preset_summary(),
            "presets": _presets_with_holders(svc),
            # A fleet's API node with no --model offers what its live workers hold: say so.
            "presets_from": "workers" if following else "this server",
            "modes": {mode.value: mode.label for mode in ControlType},
            "statuses": {str(int(status)): status.label for status in TaskStatus},
            "ranges": {
                "width": list(SIZE_RANGE),
                "height": list(SIZE_RANGE),
                "batch_size": list(BATCH_SIZE_RANGE),
                "control_intensity": list(INTENSITY_RANGE),
                "seed": list(SEED_RANGE),
                "steps": list(STEPS_RANGE),
                "guidance_scale": list(GUIDANCE_RANGE),
                "prompt_chars": MAX_PROMPT_CHARS,
            },
            "controls": {"max": MAX_CONTROLS, "types": list(CONTROL_MODES)},
        }
    )


def _presets_with_holders(svc: Services) -> list[dict]:
    """Each preset with its state: this process's load state (embedded), or, on a fleet's API node, how
    many live workers hold it (a task for one that none holds waits, saying so)."""
    if svc.settings.follow_workers:
        names, default = svc.offered_presets()
        presets = [{**svc.backend.preset_summary(name), "name": name, "default": name == default} for name in names]
    else:
        presets = svc.backend.presets_summary()
    if svc.settings.embedded or svc.settings.cloud_only:
        return presets
    held = svc.presets_held()
    for preset in presets:
        preset["workers"] = held.get(preset["name"], 0)
        preset["state"] = f"held by {preset['workers']} live worker(s)" if preset["workers"] else "no live worker"
    return presets


@router.get("/v1/loras", **WIRE)
def list_loras(request: Request, app_key: AppKey) -> dict:
    """The LoRAs a request's `loras` may name: the operator's folders' files, by name (never their paths)."""
    return ok({"loras": [{"name": name} for name in sorted(services(request).backend.loras())]})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    from ref2img.server.metrics import render

    return PlainTextResponse(render(services(request)), media_type="text/plain; version=0.0.4")
