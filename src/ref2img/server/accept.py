"""Accepting a task: the one service every way in calls (the Tomoviee routes, the OpenAI face, the
studio through them). Its images are checked at the door, its preset and LoRAs against what this server
offers, the queue, the key's share and quota before anything is stored, its seed decided; then it is
stored and queued, once per Idempotency-Key. No router imports another: each imports this."""

from __future__ import annotations

import errno
import time
from typing import TypeVar

from fastapi import Request

from ref2img.images import ImageInputError, probe_image
from ref2img.lifecycle import GENERATE, REPAINT
from ref2img.protocol import MAX_CONTROLS, CreateRequest, ErrorCode, RepaintRequest
from ref2img.safe_http import UrlRefused
from ref2img.server.errors import ApiError
from ref2img.server.routing import route_generation, route_local
from ref2img.server.services import Services
from ref2img.tasks.inputs import IMAGE_FIELDS
from ref2img.tasks.store import IdempotencyMismatch, QueueFull, Quota, QuotaExceeded, StoreBusy, new_id
from ref2img.tasks.store.models import TaskRow


Seeded = TypeVar("Seeded", CreateRequest, RepaintRequest)


def check_inputs(svc: Services, app_key: str, images: dict[str, str | None], callback: str | None) -> None:
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
    """Refuse now what `enqueue` would (the queue, the key's share and quota): a way in that stores files
    for the task first (the OpenAI route's uploads) asks this before it stores anything."""
    try:
        svc.store.tasks.check_admission(app_key, svc.settings.queue_limit, svc.settings.key_share, _quota(svc, app_key))
    except (QueueFull, QuotaExceeded) as exc:
        raise _busy(exc) from None


def enqueue(
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
    check_inputs(svc, app_key, {**images, **control_images}, create.callback)
    default = svc.offered_presets()[1]
    other_preset = create.model not in (None, default)  # only the local GPUs hold it
    local = create.local_only or other_preset
    preset = None if svc.settings.cloud_only else (create.model or default)
    route = route_local(svc, create) if local else route_generation(svc, app_key, images, preset)
    create = _seeded(request, app_key, create)
    payload = create.model_dump(mode="json")
    task = enqueue(svc, request, app_key, GENERATE, payload, create.params, create.callback, route, preset)
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
    check_inputs(svc, app_key, images, repaint.callback)
    route = route_generation(svc, app_key, images)
    repaint = _seeded(request, app_key, repaint)
    payload = repaint.model_dump(mode="json")
    task = enqueue(svc, request, app_key, REPAINT, payload, repaint.params, repaint.callback, route)
    assert repaint.seed is not None  # with_seed
    return task.id, repaint.seed


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 0 < len(key) <= 255:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "Idempotency-Key: must be 1 to 255 characters")
    return key


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
