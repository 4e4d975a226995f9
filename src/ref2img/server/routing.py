"""Which workers take a new task: the local GPUs, or the Tomoviee cloud (docs/cloud.md).

- `--engine tomoviee`: every generation goes to the cloud. Its images must be URLs the cloud can
  fetch: public ones, or (with an explicit --public-url) signed URLs of this server for uploads and
  data URIs; without --public-url those are refused here, before anything is queued.
- `--overflow tomoviee --overflow-after S`: a generation goes to the cloud when its estimated wait on
  the local GPUs that hold its preset is over S seconds, or none holds it (and the cloud can fetch its
  images); recognition stays local, and so does a generation naming a preset other than the default
  (the cloud runs its own model, not that one).
"""

from __future__ import annotations

from ref2img.protocol import CreateRequest, ErrorCode
from ref2img.server.errors import ApiError
from ref2img.server.services import Services
from ref2img.lifecycle import CLOUD, LOCAL


def route_generation(svc: Services, app_key: str, images: dict[str, str | None], preset: str | None = None) -> str:
    settings = svc.settings
    if not settings.uses_cloud:
        return LOCAL
    needs_url = [
        field
        for field, url in images.items()
        if url is not None and settings.cloud_reachable_url is None and svc.images.needs_publishing(url, field, app_key)
    ]
    if settings.cloud_only:
        if needs_url:
            raise ApiError(
                ErrorCode.INVALID_PARAMETER,
                f"{needs_url[0]}: this server forwards tasks to the Tomoviee cloud, which fetches images by URL; "
                "send a public http(s) URL, or start the server with --public-url (a URL the cloud can reach) "
                "to forward uploads and data URIs",
            )
        return CLOUD
    cloud = svc.backend.cloud_engine
    if needs_url or cloud is None or cloud.state.failed:
        return LOCAL
    return CLOUD if local_wait_s(svc, preset) > settings.overflow_after_s else LOCAL


def route_local(svc: Services, create: CreateRequest) -> str:
    """A task with `controls`, `steps` or `guidance_scale` (our extensions) runs on the local GPUs: the
    cloud has no such knobs. Its family must run that many controls (with the subject, when kept): else
    680001 naming the field."""
    if svc.settings.cloud_only:
        field = create.local_only[0]
        raise ApiError(
            ErrorCode.ENGINE_UNAVAILABLE,
            f"engine unavailable: {field} needs a local engine, and this server forwards generation to the "
            "Tomoviee cloud only, which has no such knob",
        )
    if not create.controls:
        return LOCAL
    # An API node that follows its workers checks the preset the task was given; others their own model.
    model = create.model if svc.settings.follow_workers else None
    problem = svc.backend.controls_problem(len(create.controls or ()), create.keeps_subject, model)
    if problem is not None:
        field, message = problem
        raise ApiError(ErrorCode.INVALID_PARAMETER, f"{field}: {message} (this server's model)")
    return LOCAL


def route_recognition(svc: Services) -> str:
    if svc.settings.cloud_only:
        raise ApiError(
            ErrorCode.ENGINE_UNAVAILABLE,
            "engine unavailable: control maps (tm_reference_img2mask) need a local engine, and this server "
            "forwards generation to the Tomoviee cloud only",
        )
    return LOCAL


def local_wait_s(svc: Services, preset: str | None = None) -> float:
    """A new task's wait on the local GPUs: the local tasks ahead of it (of its preset), shared by the
    local workers (that hold it), at the moving average run time. Endless while no live worker holds
    its preset: the cloud takes it then (overflow is per preset)."""
    workers = svc.worker_count(preset)
    if workers == 0:
        return float("inf")
    queued, running = svc.store.tasks.active_count(LOCAL, preset)
    return (queued + running) / workers * svc.estimate.seconds
