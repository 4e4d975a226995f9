"""Engines turn a job into images. `base` holds the interface; implementations live beside it."""

from ref2img.engines.base import (
    Engine,
    EngineError,
    ImageInvalidError,
    Job,
    JobCancelled,
    ModelMissingError,
    ProgressCallback,
)

__all__ = [
    "Engine",
    "EngineError",
    "ImageInvalidError",
    "Job",
    "JobCancelled",
    "ModelMissingError",
    "ProgressCallback",
]
