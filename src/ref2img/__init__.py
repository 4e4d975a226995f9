"""ref2img: new images from a reference image and a prompt (edge, pose, subject, depth control).

Importing this package never imports torch, FastAPI or SQLAlchemy.
"""

from ref2img.protocol import ControlType, CreateRequest, ParameterError, TaskStatus, parse_create_request

__version__ = "0.1.0"

__all__ = ["ControlType", "CreateRequest", "ParameterError", "TaskStatus", "__version__", "parse_create_request"]
