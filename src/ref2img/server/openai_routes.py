"""OpenAI's images API on ref2img's tasks (docs/openai.md): `POST /v1/images/edits`,
`POST /v1/images/generations` and `GET /v1/models`, so that any app that speaks it is a client.

Every call goes through what the Tomoviee routes use: the same keys (Bearer `app_key:app_secret`), the
failed-authentication throttle, quotas and queue limits, the size caps and the checks at the door,
the same task queue. An edit is one task like any other (the studio's history shows it); the call
holds the connection until the task ends, and a client that leaves does not take the task with it.
Not in the OpenAPI document: OpenAI's own reference describes these routes, and their errors are in
OpenAI's envelope rather than ours.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from ref2img.images import ImageInputError, open_image
from ref2img.protocol import (
    SIZE_RANGE,
    ErrorCode,
    ParameterError,
    TaskStatus,
    parse_create_request,
    parse_repaint_request,
)
from ref2img.server.auth import BearerKey
from ref2img.server.errors import ApiError
from ref2img.server.openai_images import (
    CONTENT_POLICY,
    PARAM_OF_FIELD,
    EditForm,
    OpenAIError,
    bad_request,
    from_wire_error,
    model_names,
    parse_size,
)
from ref2img.server.accept import check_admission, store_upload, submit_generation, submit_repaint
from ref2img.server.services import Services, Svc
from ref2img.tasks.store.models import TaskRow

router = APIRouter(include_in_schema=False)
MAX_IMAGES = 2  # the reference, then an optional init image
MAX_FORM_FIELDS = 40
MODELS_CREATED = 1_767_225_600  # 2026-01-01: `created` of the model list (the names do not change)
NOT_AGAIN = {"x-should-retry": "false"}  # the task ran: an SDK's automatic retry would make another


def presets(svc: Services) -> list[str]:
    """The presets a model name's suffix may name: this server's, by their own names (`sdxl`, `tiny`); none
    on a server that forwards to the cloud only (the cloud's model has no name here)."""
    return [] if svc.settings.cloud_only else svc.offered_presets()[0]


@router.get("/v1/models")
async def list_models(request: Request, svc: Svc, app_key: BearerKey) -> dict[str, Any]:
    names = model_names(presets(svc))
    return {"object": "list", "data": [_model(name) for name in names]}


@router.get("/v1/models/{model_id:path}")
async def get_model(request: Request, svc: Svc, model_id: str, app_key: BearerKey) -> dict[str, Any]:
    if model_id not in model_names(presets(svc)):
        raise OpenAIError(
            404, f"model: {model_id[:100]!r} is not a model of this server", param="model", code="model_not_found"
        )
    return _model(model_id)


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": MODELS_CREATED, "owned_by": "ref2img"}


@router.post("/v1/images/generations")
async def generations(request: Request, app_key: BearerKey) -> None:
    raise OpenAIError(
        400,
        "image: ref2img makes new images from a reference image, and this request has none; send the reference "
        "with the prompt to POST /v1/images/edits (multipart: image, prompt, model, n, size)",
        param="image",
        code="reference_image_required",
    )


@router.post("/v1/images/edits")
async def edits(request: Request, svc: Svc, app_key: BearerKey) -> Any:
    form = await request.form(max_files=MAX_IMAGES + 1, max_fields=MAX_FORM_FIELDS)
    try:
        fields = {key: value for key, value in form.multi_items() if isinstance(value, str)}
        edit = EditForm.parse(fields, presets(svc))
        images = [value for key, value in form.multi_items() if key in ("image", "image[]")]
        mask = form.get("mask")
        cap = svc.images.max_bytes
        uploads = [await _read(value, "image", cap) for value in images]
        mask_data = await _read(mask, "mask", cap) if mask is not None else None
    finally:
        await form.close()
    if not uploads:
        raise bad_request(
            "image", "required: the reference image, as a file (multipart)", code="missing_required_parameter"
        )
    if len(uploads) > MAX_IMAGES:
        raise bad_request("image", f"at most {MAX_IMAGES} images: the reference, then an init image to start from")
    base_url = str(request.base_url)
    task_id, size = await run_in_threadpool(_submit, svc, request, app_key, edit, uploads, mask_data, base_url)
    if edit.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = _stream(request, svc, app_key, task_id, edit, size)
        return StreamingResponse(events, media_type="text/event-stream", headers=headers)
    task = await _last(_watch(request, svc, app_key, task_id))
    if task is None or not TaskStatus(task.status).is_final:
        return None  # the client left; the task goes on (its images are in /v1/tasks and the studio)
    if task.status != TaskStatus.SUCCEEDED:
        raise _ended_badly(task)
    data = await run_in_threadpool(_images, svc, task, base_url, edit.response_format)
    return JSONResponse(_response(data, size))


async def _read(value: Any, param: str, max_bytes: int) -> bytes:
    if not isinstance(value, UploadFile):
        raise bad_request(param, "must be an image file (multipart), not a text field")
    return await value.read(max_bytes + 1)  # over the cap: refused by name in store_upload


def _submit(
    svc: Services,
    request: Request,
    app_key: str,
    edit: EditForm,
    uploads: list[bytes],
    mask: bytes | None,
    base_url: str,
) -> tuple[str, tuple[int, int]]:
    """Keep the images as this key's files and queue the task: a generation, or with a mask an Image
    Repaint of the first image. Returns the task id and the output size."""
    # Every image, the queue and the key's quota are checked before anything is stored: a refused call
    # leaves nothing behind.
    reference_size = _image_size(uploads[0], "image", svc.images.max_bytes)
    ours = _repaint_mask(mask, svc.images.max_bytes) if mask is not None else None
    try:
        check_admission(svc, app_key)
    except ApiError as exc:
        raise from_wire_error(exc.code, exc.msg, exc.http_status, exc.headers) from None
    urls = [_upload(svc, base_url, app_key, data, "image") for data in uploads]
    try:
        if ours is not None:
            return _submit_repaint(svc, request, app_key, edit, urls, ours, reference_size, base_url)
        size = parse_size(edit.size, reference_size)
        create = parse_create_request(edit.create_body(urls[0], urls[1] if len(urls) > 1 else None, size))
        task_id, _ = submit_generation(svc, request, app_key, create)
        return task_id, size
    except ParameterError as exc:
        raise from_wire_error(ErrorCode.INVALID_PARAMETER, str(exc), 400) from None


def _submit_repaint(
    svc: Services,
    request: Request,
    app_key: str,
    edit: EditForm,
    urls: list[str],
    ours: bytes,
    size: tuple[int, int],
    base_url: str,
) -> tuple[str, tuple[int, int]]:
    """An Image Repaint of the one image with `ours`, the mask already in our terms (`_repaint_mask`),
    at the image's own size."""
    if edit.n != 1:
        raise bad_request("n", f"must be 1 with a mask: Image Repaint makes one image (got {edit.n})")
    if len(urls) > 1:
        raise bad_request("image", "one image with a mask: the image to edit")
    if edit.size not in (None, "", "auto", f"{size[0]}x{size[1]}"):
        raise bad_request("size", f"with a mask the image keeps its own size: auto or {size[0]}x{size[1]}")
    mask_url = _upload(svc, base_url, app_key, ours, "mask")
    body = {"prompt": edit.prompt, "init_image": urls[0], "mask_url": mask_url}
    body.update({key: value for key, value in edit.extras.items() if key in ("seed", "negative_prompt")})
    task_id, _ = submit_repaint(svc, request, app_key, parse_repaint_request(body))
    return task_id, size


def _upload(svc: Services, base_url: str, app_key: str, data: bytes, param: str) -> str:
    try:
        return store_upload(svc, base_url, app_key, data, param)[1]
    except ApiError as exc:
        raise from_wire_error(exc.code, exc.msg, 400) from None


def _image_size(data: bytes, param: str, max_bytes: int) -> tuple[int, int]:
    try:
        return open_image(data, param, max_bytes).size  # the header only
    except ImageInputError as exc:
        raise from_wire_error(exc.code, str(exc), 400) from None


def _repaint_mask(data: bytes, max_bytes: int) -> bytes:
    """OpenAI's mask (transparent where the image is edited) as ours: white where it is transparent
    (alpha 0); a mask with no alpha is taken as ours already (white = edit). Its sides are checked from the
    header before any pixel is decoded; what is not a usable image is a 400 naming `mask`."""
    try:
        image = open_image(data, "mask", max_bytes)  # format, pixels and shape, from the header
    except ImageInputError as exc:
        raise from_wire_error(exc.code, str(exc), 400) from None
    if max(image.size) > SIZE_RANGE[1]:
        raise bad_request("mask", f"must be at most {SIZE_RANGE[1]} px a side, as the image (got {image.size})")
    try:
        if "A" in image.getbands() or "transparency" in image.info:
            alpha = image.convert("RGBA").getchannel("A")
            ours = alpha.point(lambda value: 255 if value == 0 else 0)
        else:
            ours = image.convert("L")
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # a body that is not all there
        raise bad_request("mask", f"could not be decoded ({exc})", code="invalid_image") from None
    buffer = io.BytesIO()
    ours.save(buffer, format="PNG")
    return buffer.getvalue()


async def _watch(request: Request, svc: Services, app_key: str, task_id: str) -> AsyncIterator[TaskRow]:
    """The task at each change until it ends, or until the client leaves (the task goes on)."""
    while True:
        seen = svc.store.tasks.changes.version
        task = await run_in_threadpool(svc.store.tasks.get, task_id, app_key)
        if task is None:
            return
        yield task
        if TaskStatus(task.status).is_final or await request.is_disconnected():
            return
        await svc.store.tasks.changes.wait_async(seen, 1.0)  # local changes wake it; 1 s catches other nodes'


async def _last(states: AsyncIterator[TaskRow]) -> TaskRow | None:
    last = None
    async for last in states:  # noqa: B007 (the last state is the point)
        pass
    return last


def _images(svc: Services, task: TaskRow, base_url: str, response_format: str) -> list[dict[str, str]]:
    names = json.loads(task.result or "[]")
    if response_format == "url":
        return [{"url": svc.storage.signed_url(base_url, name)} for name in names]
    return [{"b64_json": base64.b64encode(svc.storage.read(name)).decode()} for name in names]


def _response(data: list[dict[str, str]], size: tuple[int, int]) -> dict[str, Any]:
    return {
        "created": int(time.time()),
        "data": data,
        "size": f"{size[0]}x{size[1]}",
        "output_format": "png",
        "background": "opaque",
    }


def _ended_badly(task: TaskRow) -> OpenAIError:
    """A task that did not succeed: the client's input (a reason that names a field) is a 400, the
    rest the server's; never retried by the SDK, since the task ran."""
    status = TaskStatus(task.status)
    reason = task.reason or status.label
    if status is TaskStatus.FAILED and reason.startswith(CONTENT_POLICY):
        return OpenAIError(400, reason, code="content_policy_violation", headers=NOT_AGAIN)
    field = reason.split(":", 1)[0]
    if status is TaskStatus.FAILED and (field in PARAM_OF_FIELD or field in ("prompt", "controls", "mask")):
        return from_wire_error(ErrorCode.INVALID_PARAMETER, reason, 400, NOT_AGAIN)
    status_code, code = {
        TaskStatus.TIMED_OUT: (504, "task_timeout"),
        TaskStatus.CANCELLED: (500, "task_cancelled"),
    }.get(status, (500, "task_failed"))
    return OpenAIError(
        status_code, f"task {task.id} {status.label}: {reason}", code=code, type="server_error", headers=NOT_AGAIN
    )


async def _stream(
    request: Request, svc: Services, app_key: str, task_id: str, edit: EditForm, size: tuple[int, int]
) -> AsyncIterator[str]:
    """OpenAI's streaming form: up to `partial_images` `image_edit.partial_image` events from the step
    previews, then one `image_edit.completed` event per image (or an `error` event)."""
    common = {"size": f"{size[0]}x{size[1]}", "quality": "auto", "background": "opaque"}
    sent_preview, index, task = None, 0, None
    async for task in _watch(request, svc, app_key, task_id):
        if (
            task.preview
            and task.preview != sent_preview
            and index < edit.partial_images
            and task.status == TaskStatus.PROCESSING
        ):
            preview = await run_in_threadpool(svc.storage.read, task.preview)
            yield _event(
                "image_edit.partial_image",
                {
                    "b64_json": base64.b64encode(preview).decode(),
                    "partial_image_index": index,
                    "output_format": "jpeg",
                    **common,
                },
            )
            sent_preview, index = task.preview, index + 1
    if task is None or not TaskStatus(task.status).is_final:
        return
    if task.status != TaskStatus.SUCCEEDED:
        error = _ended_badly(task)
        yield _event(
            "error", {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}
        )
        return
    for image in await run_in_threadpool(_images, svc, task, str(request.base_url), "b64_json"):
        yield _event("image_edit.completed", {**image, "output_format": "png", **common})


def _event(kind: str, data: dict[str, Any]) -> str:
    payload = {"type": kind, "created_at": int(time.time()), **data}
    return f"event: {kind}\ndata: {json.dumps(payload, separators=(',', ':'))}\n\n"
