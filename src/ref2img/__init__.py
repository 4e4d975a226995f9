"""ref2img: new images from a reference image and a prompt (edge, pose, subject, depth control).

Importing this package never imports torch, FastAPI or SQLAlchemy.
"""

from ref2img._version import __version__
from ref2img.client import (
    APIConnectionError,
    APIError,
    AsyncClient,
    AuthenticationError,
    Client,
    ImageFetchError,
    InvalidRequestError,
    RateLimitError,
    Ref2ImgError,
    Task,
    TaskCancelledError,
    TaskError,
    TaskFailedError,
    TaskTimedOutError,
    WaitTimeoutError,
)
from ref2img.protocol import (
    Control,
    ControlType,
    CreateRequest,
    ParameterError,
    RepaintRequest,
    TaskStatus,
    parse_create_request,
)
from ref2img import webhooks  # `ref2img.webhooks.verify(...)` after a plain `import ref2img`

__all__ = [
    "APIConnectionError",
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Control",
    "ControlType",
    "CreateRequest",
    "ImageFetchError",
    "InvalidRequestError",
    "ParameterError",
    "RateLimitError",
    "Ref2ImgError",
    "RepaintRequest",
    "Task",
    "TaskCancelledError",
    "TaskError",
    "TaskFailedError",
    "TaskStatus",
    "TaskTimedOutError",
    "WaitTimeoutError",
    "__version__",
    "parse_create_request",
    "webhooks",
]
