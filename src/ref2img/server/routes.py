"""Every route of the wire protocol (DESIGN.md §1) plus our extensions."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ref2img.lifecycle import RECOGNIZE
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
from ref2img.server.routing import route_recognition
from ref2img.server.accept import check_inputs, enqueue, store_upload, submit_generation, submit_repaint
from ref2img.server.services import Services, Svc, store_read

router = APIRouter()
WIRE: dict[str, Any] = {"responses": openapi.ENVELOPE_RESPONSES, "response_model": None}  # see openapi.py


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()  # over max_body_bytes: 680001 "body: …" from limits.BodyLimit
    try:
        body = json.loads(raw or b"{}")
    except (ValueError, RecursionError):
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be a JSON object") from None
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be a JSON object")
    return body


def _parameter_error(exc: ParameterError) -> ApiError:
    return ApiError(ErrorCode.INVALID_PARAMETER, str(exc))


@router.post(
    "/v1/open/capacity/application/tm_reference_img2img", openapi_extra=openapi.json_body(CreateRequest), **WIRE
)
def create_img2img(
    request: Request, svc: Svc, app_key: AppKey, body: Annotated[dict, Depends(json_body)]
) -> JSONResponse:
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
def create_img2mask(
    request: Request, svc: Svc, app_key: AppKey, body: Annotated[dict, Depends(json_body)]
) -> JSONResponse:
    try:
        recognize = parse_recognize_request(body)
    except ParameterError as exc:
        raise _parameter_error(exc) from None
    check_inputs(svc, app_key, {"init_image": recognize.init_image}, recognize.callback)
    route = route_recognition(svc)
    payload = recognize.model_dump(mode="json")
    task = enqueue(svc, request, app_key, RECOGNIZE, payload, recognize.params, recognize.callback, route)
    return JSONResponse(ok({"task_id": task.id}))


@router.post("/v1/open/capacity/application/tm_redrawing", openapi_extra=openapi.json_body(RepaintRequest), **WIRE)
def create_redrawing(
    request: Request, svc: Svc, app_key: AppKey, body: Annotated[dict, Depends(json_body)]
) -> JSONResponse:
    """Image Repaint (inpainting): the masked area of `init_image` redrawn from `prompt`."""
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


def _wait_seconds(body: dict) -> float:
    wait = body.get("wait", 0)
    if isinstance(wait, bool) or not isinstance(wait, int | float) or not 0 <= wait <= MAX_WAIT_S:
        raise ApiError(ErrorCode.INVALID_PARAMETER, f"wait: must be a number of seconds from 0 to {MAX_WAIT_S:.0f}")
    return float(wait)


@router.post("/v1/open/pub/task", openapi_extra=openapi.json_body(openapi.TaskLookup), **WIRE)
async def query_task(
    request: Request, svc: Svc, app_key: AppKey, body: Annotated[dict, Depends(json_body)]
) -> JSONResponse:
    """Task state; with `wait` (≤ 30 s) it answers as soon as the status changes (DESIGN.md §1)."""
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
def cancel_task(request: Request, svc: Svc, app_key: AppKey, body: Annotated[dict, Depends(json_body)]) -> dict:
    task_id = _task_id(body)
    task = svc.store.tasks.request_cancel(task_id, app_key)
    if task is None:
        raise ApiError(ErrorCode.TASK_NOT_FOUND, f"task_id: no task {task_id!r}")
    return ok(svc.task_data(task, str(request.base_url)))


@router.get("/v1/open/capacity/get/token", **WIRE)
async def get_token(
    request: Request, svc: Svc, access_key: Annotated[str, Query()] = "", secret: Annotated[str, Query()] = ""
) -> dict:
    if not access_key or not secret:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "access_key and secret: both are required query parameters")
    verifier = svc.verifier
    await check_secret(
        request,
        access_key,
        lambda: verifier.verify(access_key, secret),
        ApiError(ErrorCode.UNAUTHORIZED, "unauthorized: unknown app key or wrong secret", 401),
    )
    return ok({"access_token": basic_token(access_key, secret)})


@router.post("/v1/files", **WIRE)
def upload_file(request: Request, svc: Svc, app_key: AppKey, file: Annotated[UploadFile, File()]) -> dict:
    data = file.file.read(svc.settings.max_body_bytes + 1)
    file_id, url = store_upload(svc, str(request.base_url), app_key, data, "file")
    return ok({"file_id": file_id, "url": url})


_MEDIA_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp", ".gif": "image/gif"}


@router.get("/v1/files/{name:path}", include_in_schema=False)
def get_file(request: Request, svc: Svc, name: str, expires: str = "", sig: str = "") -> Response:
    storage = svc.storage
    if not storage.check_signature(name, expires, sig):
        raise ApiError(ErrorCode.TASK_NOT_FOUND, "file: the link is invalid or has expired", 404)
    try:
        data = storage.read(name)
    except (FileNotFoundError, IsADirectoryError):
        raise ApiError(ErrorCode.TASK_NOT_FOUND, "file: not found", 404) from None
    media_type = _MEDIA_TYPES.get(Path(name).suffix, "application/octet-stream")
    return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})


@router.get("/healthz", **WIRE)
def healthz(request: Request, svc: Svc) -> dict:
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
def info(request: Request, svc: Svc, app_key: AppKey) -> dict:
    """What this server runs and what a request may ask, from `protocol.py`: the preset, the modes and
    statuses in words, every range. Pages and clients read it rather than spell it again."""
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
def list_loras(request: Request, svc: Svc, app_key: AppKey) -> dict:
    """The LoRAs a request's `loras` may name: the operator's folders' files, by name (never their paths)."""
    return ok({"loras": [{"name": name} for name in sorted(svc.backend.loras())]})


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request, svc: Svc) -> PlainTextResponse:
    from ref2img.server.metrics import render

    return PlainTextResponse(render(svc), media_type="text/plain; version=0.0.4")
