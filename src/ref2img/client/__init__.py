"""The ref2img SDK: `Client` / `AsyncClient` for the Tomoviee cloud and ref2img servers alike."""

from ref2img.client._async import AsyncClient
from ref2img.client._core import DEFAULT_BASE_URL
from ref2img.client._exceptions import (
    APIConnectionError,
    APIError,
    AuthenticationError,
    EngineUnavailableError,
    ImageFetchError,
    InvalidRequestError,
    RateLimitError,
    Ref2ImgError,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskNotFoundError,
    TaskTimedOutError,
    UnsupportedError,
    WaitTimeoutError,
)
from ref2img.client._models import Task
from ref2img.client._policy import PollPlan, retry_delay
from ref2img.client._sync import Client

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "EngineUnavailableError",
    "ImageFetchError",
    "InvalidRequestError",
    "PollPlan",
    "RateLimitError",
    "Ref2ImgError",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskNotFoundError",
    "TaskTimedOutError",
    "UnsupportedError",
    "WaitTimeoutError",
    "retry_delay",
]
