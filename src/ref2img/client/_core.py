"""What Client and AsyncClient share: configuration, request bodies, envelope decoding, the retry
decision and the wait loop's decisions. The two clients only add the I/O (blocking or async)."""

from __future__ import annotations

import io
import re
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from ref2img._version import __version__
from ref2img.client._exceptions import (
    APIError,
    InvalidRequestError,
    Ref2ImgError,
    TaskCancelledError,
    TaskFailedError,
    TaskTimedOutError,
    UnsupportedError,
    WaitTimeoutError,
    error_for,
)
from ref2img.client._models import Task
from ref2img.client._policy import RETRYABLE_STATUS, PollPlan, parse_retry_after, request_never_left, retry_delay
from ref2img.protocol import (
    ALLOWED,
    Control,
    MAX_WAIT_S,
    RECOGNIZE_CONTROL_TYPES,
    ControlType,
    CreateRequest,
    ParameterError,
    RepaintRequest,
    TaskStatus,
    basic_token,
    parse_create_request,
    parse_recognize_request,
    parse_repaint_request,
)

DEFAULT_BASE_URL = "https://open-api.wondershare.cc"
CLOUD_HOSTS = {"open-api.wondershare.cc", "openapi.wondershare.cc"}
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_RETRIES = 2
PROGRESS_POLL_S = 2.0  # long-polls end on a status change; with a progress callback, look more often

CREATE_PATH = "/v1/open/capacity/application/tm_reference_img2img"
RECOGNIZE_PATH = "/v1/open/capacity/application/tm_reference_img2mask"
REPAINT_PATH = "/v1/open/capacity/application/tm_redrawing"
QUERY_PATH = "/v1/open/pub/task"
CANCEL_PATH = "/v1/open/pub/task/cancel"
TOKEN_PATH = "/v1/open/capacity/get/token"
FILES_PATH = "/v1/files"

ImageInput = Any  # an http(s)/data URL, a local path (str or Path), a PIL image, or bytes


@dataclass(frozen=True)
class ClientConfig:
    app_key: str
    app_secret: str = field(repr=False)
    base_url: str
    timeout: float
    max_retries: int
    is_cloud: bool  # the Tomoviee cloud: no long-poll, upload or cancel; creates are not idempotent

    @property
    def long_poll(self) -> bool:
        return not self.is_cloud

    @classmethod
    def resolve(
        cls,
        app_key: str | None,
        app_secret: str | None,
        base_url: str | None,
        timeout: float,
        max_retries: int,
        server: str | None,
    ) -> ClientConfig:
        app_key = app_key or os.environ.get("REF2IMG_APP_KEY")
        app_secret = app_secret or os.environ.get("REF2IMG_APP_SECRET")
        if not app_key or not app_secret:
            raise Ref2ImgError(
                "no credentials: pass app_key= and app_secret=, or set REF2IMG_APP_KEY and REF2IMG_APP_SECRET"
            )
        base_url = (base_url or os.environ.get("REF2IMG_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if server not in (None, "cloud", "ref2img"):
            raise Ref2ImgError(f"server must be 'cloud', 'ref2img' or None (from the host), not {server!r}")
        is_cloud = server == "cloud" if server else urlsplit(base_url).hostname in CLOUD_HOSTS
        return cls(app_key, app_secret, base_url, timeout, max_retries, is_cloud)

    def headers(self) -> dict[str, str]:
        return {
            "X-App-Key": self.app_key,
            "Authorization": basic_token(self.app_key, self.app_secret),
            "User-Agent": f"ref2img-python/{__version__}",
        }


def client_repr(name: str, config: ClientConfig) -> str:
    return f"{name}(base_url={config.base_url!r}, app_key={config.app_key!r}, app_secret='***')"


IMAGE_FIELDS = ("reference_image", "init_image", "mask_url")  # the request fields that hold images


# -- request bodies -----------------------------------------------------------------------------
def is_url(value: ImageInput) -> bool:
    """Strings with a scheme go to the server as they are (it judges them); anything else is uploaded."""
    return isinstance(value, str) and ("://" in value or value.startswith("data:"))


PLACEHOLDER_URL = "https://placeholder.invalid/x.png"  # stands for an image that is uploaded before sending


def create_request(
    prompt: str, reference_image: ImageInput, control_type: str | int | ControlType, fields: dict[str, Any]
) -> tuple[CreateRequest, dict[str, ImageInput]]:
    """The create request of `Client.create`'s arguments, validated by `ref2img.protocol` before anything
    is sent, and the images that are no strings (PIL images, bytes, paths), to upload first: they stand
    as placeholders in the request until then."""
    try:
        kind = ControlType.parse(control_type)
    except ValueError:
        raise _invalid("control_type", f"must be {ALLOWED['control_type']} (got {control_type!r})") from None
    given = {"prompt": prompt, "reference_image": reference_image, "control_type": kind.value, **fields}
    body = {key: value for key, value in given.items() if value is not None}
    if "controls" in body:
        body["controls"] = [_control_dict(control) for control in body["controls"]]
    uploads = {key: value for key, value in image_fields(body) if not isinstance(value, str)}
    try:
        request = parse_create_request(with_images(body, dict.fromkeys(uploads, PLACEHOLDER_URL)))
    except ParameterError as exc:
        raise _invalid(exc.field, exc.message) from None
    return request, uploads


def repaint_request(
    prompt: str, image: ImageInput, mask: ImageInput | None, fields: dict[str, Any]
) -> tuple[RepaintRequest, dict[str, ImageInput]]:
    """The Image Repaint request of `Client.repaint`'s arguments, validated before anything is sent, and
    the images to upload first (as `create_request`)."""
    given = {"prompt": prompt, "init_image": image, "mask_url": mask, **fields}
    body = {key: value for key, value in given.items() if value is not None}
    uploads = {key: body[key] for key in IMAGE_FIELDS if key in body and not isinstance(body[key], str)}
    try:
        request = parse_repaint_request({**body, **dict.fromkeys(uploads, PLACEHOLDER_URL)})
    except ParameterError as exc:
        raise _invalid(exc.field, exc.message) from None
    return request, uploads


def submit_body(
    request: CreateRequest | RepaintRequest, uploads: dict[str, ImageInput] | None, config: ClientConfig
) -> tuple[dict[str, Any], dict[str, ImageInput]]:
    """The body to send for `request`, and the image fields still to upload into it: those of
    `uploads`, and those whose value is a local file path."""
    body = with_images(request.to_wire(), uploads or {})
    return body, upload_needed(body, config)


def recognize_body(image: ImageInput, control_type: str | int | ControlType) -> dict[str, Any]:
    try:  # the server's own rule, checked before anything is sent or uploaded
        kind = ControlType.parse(control_type)
        parse_recognize_request({"control_type": kind.value, "init_image": "https://placeholder.invalid/x.png"})
    except ValueError:
        raise _invalid("control_type", f"must be {RECOGNIZE_CONTROL_TYPES} (got {control_type!r})") from None
    return {"control_type": kind.value, "init_image": image}


def _invalid(field: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(680001, f"{field}: {message}", None, field)


def _control_dict(control: Any) -> Any:
    """A control as the SDK takes it (`Control(...)` or a dict), as a body entry; its image kept as given
    (a PIL image or bytes is uploaded before sending)."""
    if isinstance(control, Control):
        return control.model_dump(mode="json", exclude_none=True)
    return dict(control) if isinstance(control, dict) else control


def image_fields(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(field, value) of every image a body holds: the top-level fields, then each control's `image`."""
    found = [(key, body[key]) for key in IMAGE_FIELDS if key in body]
    for index, control in enumerate(body.get("controls") or ()):
        if isinstance(control, dict) and control.get("image") is not None:
            found.append((f"controls[{index}].image", control["image"]))
    return found


def with_images(body: dict[str, Any], images: dict[str, Any]) -> dict[str, Any]:
    """`body` with the images of `images` (field -> value) put in, a control's too (a copy)."""
    body = {**body, "controls": [dict(c) for c in body["controls"]]} if body.get("controls") else dict(body)
    for name, value in images.items():
        if name.startswith("controls["):
            body["controls"][int(name[len("controls[") : name.index("]")])]["image"] = value
        else:
            body[name] = value
    return body


def upload_needed(body: dict[str, Any], config: ClientConfig) -> dict[str, ImageInput]:
    """The image fields whose values must be uploaded first (files, PIL images, bytes)."""
    pending: dict[str, Any] = {key: value for key, value in image_fields(body) if not is_url(value)}
    for key, value in pending.items():
        if isinstance(value, (str, Path)) and not Path(value).expanduser().is_file():
            raise _invalid(key, f"no such file: {value} (give an http(s) URL, a data: URI or a local file)")
    if pending and config.is_cloud:
        raise UnsupportedError(
            "the Tomoviee cloud needs public image URLs; upload the file somewhere public "
            "(or use a ref2img server, which accepts uploads)"
        )
    return pending


def upload_payload(value: ImageInput, field: str = "image") -> tuple[str, bytes, str]:
    """(file name, bytes, content type) of an image input to upload."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise _invalid(field, f"no such file: {path} (give an http(s) URL, a data: URI or a local file)")
        return path.name, path.read_bytes(), "application/octet-stream"
    if isinstance(value, bytes):
        return "image", value, "application/octet-stream"
    if hasattr(value, "save"):  # a PIL image
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    raise _invalid(field, f"cannot use a {type(value).__name__} as an image")


def new_idempotency_key() -> str:
    return f"ref2img-{uuid.uuid4()}"


# -- responses and retries ----------------------------------------------------------------------
def envelope_data(response: httpx.Response) -> Any:
    """The `data` of a success envelope; the matching exception for anything else."""
    try:
        envelope = response.json()
    except ValueError:
        raise APIError(
            response.status_code, f"HTTP {response.status_code}: the answer is not JSON", response.status_code
        ) from None
    if not isinstance(envelope, dict) or "code" not in envelope:
        raise APIError(
            response.status_code, f"HTTP {response.status_code}: not a Tomoviee envelope", response.status_code
        )
    if envelope["code"] != 0:
        raise error_for(
            int(envelope["code"]),
            str(envelope.get("msg") or ""),
            response.status_code,
            parse_retry_after(response.headers),
        )
    return envelope.get("data")


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay: float = 0.0


def decide_retry(
    attempt: int,
    max_retries: int,
    idempotent: bool,
    *,
    response: httpx.Response | None = None,
    error: httpx.HTTPError | None = None,
) -> RetryDecision:
    if attempt >= max_retries:
        return RetryDecision(False)
    if error is not None:
        return RetryDecision(idempotent or request_never_left(error), retry_delay(attempt, None))
    if response is not None and response.status_code in RETRYABLE_STATUS and idempotent:
        return RetryDecision(True, retry_delay(attempt, parse_retry_after(response.headers)))
    return RetryDecision(False)


# -- waiting ------------------------------------------------------------------------------------
def raise_if_failed(task: Task) -> Task:
    if task.status == TaskStatus.FAILED:
        raise TaskFailedError(task)
    if task.status == TaskStatus.CANCELLED:
        raise TaskCancelledError(task)
    if task.status == TaskStatus.TIMED_OUT:
        raise TaskTimedOutError(task)
    return task


class WaitLoop:
    """The decisions of `wait()`: how long the next query may long-poll, how long to sleep."""

    def __init__(self, task_id: str, timeout: float, long_poll: bool, on_progress=None):
        self.task_id = task_id
        self.started = time.monotonic()
        self.deadline = self.started + timeout
        self.long_poll = long_poll
        self.on_progress = on_progress
        self.plan = PollPlan()
        self.last: Task | None = None
        self.changed = True

    def poll_wait(self) -> float | None:
        """Seconds the next query may wait server-side (None: an ordinary query)."""
        if not self.long_poll:
            return None
        longest = PROGRESS_POLL_S if self.on_progress is not None else MAX_WAIT_S
        return max(0.0, min(longest, self.deadline - time.monotonic()))

    def report(self, task: Task) -> Any:
        """After a query, first: call `on_progress` if the status or progress moved. Returns what the
        callback returned, so that the async client can await a coroutine function's result."""
        self.changed = self.last is None or (task.status, task.progress) != (self.last.status, self.last.progress)
        self.last = task
        if self.changed and self.on_progress is not None:
            return self.on_progress(task)
        return None

    def observe(self, task: Task, asked_wait: float | None, took_s: float) -> float | None:
        """After `report`: None if the task ended (raises for 4/5/6), else seconds to sleep first."""
        changed = self.changed
        if task.done:
            raise_if_failed(task)
            return None
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise WaitTimeoutError(task, time.monotonic() - self.started)
        if asked_wait:
            # A server that ignores `wait` answers at once with nothing new: pace it like the cloud.
            return 0.0 if changed or took_s >= asked_wait / 2 else min(self.plan.min_interval, remaining)
        return min(self.plan.next_delay(task), remaining)


def download_path(directory: Path, task_id: str, index: int, url: str) -> Path:
    """Where image `index` of a task is saved: a name made of the task id's safe characters only, so
    that a hostile server's task id (`../../.bashrc`, `/etc/x`) cannot write outside `directory`."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", task_id)[:100] or "task"  # no separator, no dot: no way out
    return directory / f"{stem}-{index + 1}{suffix_of(url)}"


def suffix_of(url: str) -> str:
    suffix = Path(urlsplit(url).path).suffix.lower()
    return suffix if suffix in (".png", ".jpg", ".jpeg", ".webp") else ".png"
