"""Errors raised by the SDK. One class per kind of failure::

Ref2ImgError
├── APIError                    the server answered with a non-zero code (has .code, .msg, .http_status)
│   ├── AuthenticationError     140013: unknown key, wrong secret, missing headers
│   ├── InvalidRequestError     680001: a field is missing or out of range (has .field); also raised
│   │                           before any request is sent, by client-side validation
│   ├── ImageFetchError         680002 / 680003: an input image could not be fetched or used
│   ├── TaskNotFoundError       680004: no such task for this key
│   ├── RateLimitError          680005 or HTTP 429: busy; has .retry_after
│   ├── EngineUnavailableError  680006: the engine or its model is not available
│   └── UnsupportedError        the target (e.g. the Tomoviee cloud) does not offer this call
├── APIConnectionError          the server could not be reached (after the retries)
├── TaskError                   a task ended without images (has .task, .reason)
│   ├── TaskFailedError         status 4
│   ├── TaskCancelledError      status 5
│   └── TaskTimedOutError       status 6
└── WaitTimeoutError            wait() gave up before the task ended (has .task, its last state)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ref2img.protocol import ErrorCode

if TYPE_CHECKING:
    from ref2img.client._models import Task


class Ref2ImgError(Exception):
    """Base class of every SDK error."""


class APIError(Ref2ImgError):
    def __init__(self, code: int, msg: str, http_status: int | None = None):
        super().__init__(f"[{code}] {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status


class AuthenticationError(APIError):
    pass


class InvalidRequestError(APIError):
    def __init__(self, code: int, msg: str, http_status: int | None = None, field: str | None = None):
        super().__init__(code, msg, http_status)
        self.field = field if field is not None else (msg.split(":", 1)[0] if ":" in msg else None)


class ImageFetchError(APIError):
    pass


class TaskNotFoundError(APIError):
    pass


class RateLimitError(APIError):
    def __init__(self, code: int, msg: str, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(code, msg, http_status)
        self.retry_after = retry_after


class EngineUnavailableError(APIError):
    pass


class UnsupportedError(APIError):
    def __init__(self, msg: str):
        super().__init__(0, msg)


class APIConnectionError(Ref2ImgError):
    pass


class TaskError(Ref2ImgError):
    def __init__(self, task: Task):
        super().__init__(
            f"task {task.task_id} ended with status {int(task.status)} ({task.status.name.lower()})"
            + (f": {task.reason}" if task.reason else "")
        )
        self.task = task
        self.reason = task.reason


class TaskFailedError(TaskError):
    pass


class TaskCancelledError(TaskError):
    pass


class TaskTimedOutError(TaskError):
    pass


class WaitTimeoutError(Ref2ImgError):
    def __init__(self, task: Task, waited_s: float):
        super().__init__(f"task {task.task_id} still at status {int(task.status)} after {waited_s:.0f} s")
        self.task = task


_BY_CODE: dict[int, type[APIError]] = {
    ErrorCode.UNAUTHORIZED: AuthenticationError,
    ErrorCode.INVALID_PARAMETER: InvalidRequestError,
    ErrorCode.IMAGE_FETCH_FAILED: ImageFetchError,
    ErrorCode.IMAGE_INVALID: ImageFetchError,
    ErrorCode.TASK_NOT_FOUND: TaskNotFoundError,
    ErrorCode.BUSY: RateLimitError,
    ErrorCode.ENGINE_UNAVAILABLE: EngineUnavailableError,
}


def error_for(code: int, msg: str, http_status: int | None = None, retry_after: float | None = None) -> APIError:
    """The exception for a non-zero envelope code."""
    if http_status == 429 or code == ErrorCode.BUSY:
        return RateLimitError(code, msg, http_status, retry_after)
    return _BY_CODE.get(code, APIError)(code, msg, http_status)
