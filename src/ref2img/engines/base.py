"""The engine interface shared by the local diffusers engine and the cloud proxy.

Exceptions::

    EngineError                 the engine could not produce images (wire code 680006 / 680009)
    ├── ModelMissingError       a model part is not on this machine; says which and how to get it
    ├── ImageInvalidError       an input image cannot be used (wire code 680003)
    ├── EngineOptionError       an engine setting (dtype, offload, compile) is not one this machine can use
    ├── RemoteUnavailable       the remote service (the cloud) did not take the job: nothing runs there
    ├── RemoteTimedOut          the remote service gave up on the job (status 6)
    └── JobCancelled            should_cancel() said stop; raised between steps
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from ref2img.protocol import Control, ControlType, CreateRequest, RepaintRequest

if TYPE_CHECKING:
    from PIL import Image

ProgressCallback = Callable[[int, int], None]  # (steps done, steps in all)
CancelCheck = Callable[[], bool]


class EngineError(RuntimeError):
    """The engine could not produce images."""


class ModelMissingError(EngineError):
    """A model part is missing locally. The message names it and the command that fetches it."""


class ImageInvalidError(EngineError):
    """An input image cannot be used (format, size or pixels)."""


class EngineOptionError(EngineError):
    """An engine setting is invalid or does not fit the device; the message names the flag and its choices."""


class EngineOutOfMemory(EngineError):
    """The job needed more (GPU or host) memory than there is; a smaller size or batch may fit."""


class JobCancelled(EngineError):
    """The job was cancelled between two engine steps."""


class RemoteUnavailable(EngineError):
    """A remote engine's service did not accept the job (unreachable, 5xx, busy): nothing runs there, so
    the job may safely run elsewhere."""


class RemoteTimedOut(EngineError):
    """The remote service timed the job out."""


class Handoff(Protocol):
    """Where an engine that forwards a job to another service keeps that service's task id, so that
    a restarted worker follows the same remote task instead of starting a second one."""

    remote_id: str | None

    def remember(self, remote_id: str) -> None: ...

    def report_wait(self, seconds: float) -> None:
        """The remote service's own estimate of the time left (the query's `wait_time`)."""


IN_MEMORY = "memory:"  # the image "URL" of a job built from images already decoded (tests, benches)


@dataclass(frozen=True)
class Job:
    """One generation request, with its images already fetched and decoded.

    `request` holds the wire fields (validated, seed decided); the engine reads them through it, and
    the properties below name the ones every engine reads. `control_map` is a ready edge/pose/depth
    map: when given, the annotator is skipped. Image i of the batch uses `seed + i`.
    """

    request: CreateRequest
    reference: Image.Image
    init_image: Image.Image | None = None
    control_map: Image.Image | None = None
    steps: int | None = None  # None: the preset's default
    guidance_scale: float | None = None
    # For engines that forward the job (tomoviee): each image field's URL that the remote service can
    # fetch, and where the remote task's id is kept. Local engines ignore both.
    sources: Mapping[str, str] = field(default_factory=dict)
    handoff: Handoff | None = None
    # The image of each of `request.controls`, in its order: its own, or the reference (our extension).
    control_inputs: tuple[Image.Image, ...] = ()

    def __post_init__(self) -> None:
        if self.request.seed is None:
            raise ValueError("a job's request has its seed decided: use request.with_seed()")
        if len(self.control_inputs) != len(self.request.controls or ()):
            raise ValueError("a job has one control image per control")

    @property
    def seed(self) -> int:
        assert self.request.seed is not None  # __post_init__
        return self.request.seed

    @property
    def controls(self) -> tuple[Control, ...]:
        return self.request.controls or ()

    @property
    def prompt(self) -> str:
        return self.request.prompt

    @property
    def negative_prompt(self) -> str | None:
        return self.request.negative_prompt

    @property
    def control_type(self) -> ControlType:
        return self.request.control_type

    @property
    def control_intensity(self) -> float:
        return self.request.control_intensity

    @property
    def width(self) -> int:
        return self.request.width

    @property
    def height(self) -> int:
        return self.request.height

    @property
    def batch_size(self) -> int:
        return self.request.batch_size

    @classmethod
    def from_request(cls, request: CreateRequest, load_image: Callable[[str, str], Image.Image], **extra: Any) -> Job:
        """The job a validated create request asks for: `load_image(url_or_path, field)` fetches and
        decodes its images (the init image is the reference itself when they are the same, as subject
        mode's default is). A request without a seed gets one (`CreateRequest.with_seed`). `extra`:
        `control_map`, `steps`, `sources`, `handoff`."""
        reference = load_image(request.reference_image, "reference_image")
        init_source = request.resolved_init_image()
        init = (
            reference
            if init_source == request.reference_image
            else (load_image(init_source, "init_image") if init_source else None)
        )
        control_inputs = tuple(
            load_image(control.image, f"controls[{index}].image") if control.image else reference
            for index, control in enumerate(request.controls or ())
        )
        extra.setdefault("steps", request.steps)  # our extensions; a shaped job (the CLI's --steps) may set its own
        extra.setdefault("guidance_scale", request.guidance_scale)
        return cls(
            request=request.with_seed(), reference=reference, init_image=init, control_inputs=control_inputs, **extra
        )

    @classmethod
    def for_images(
        cls,
        reference: Image.Image,
        *,
        init_image: Image.Image | None = None,
        control_map: Image.Image | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        **wire_fields: Any,
    ) -> Job:
        """A job from images in memory and the wire fields (`prompt`, `control_type`, `seed` …), checked
        by the protocol as a request would be; for tests and benches that have no URLs."""
        from ref2img.protocol import parse_create_request

        control_inputs = wire_fields.pop("control_inputs", ())
        request = parse_create_request({"reference_image": IN_MEMORY, **wire_fields}).with_seed()
        inputs = tuple(control_inputs) or tuple(reference for _ in request.controls or ())
        return cls(request, reference, init_image, control_map, steps, guidance_scale, control_inputs=inputs)


@dataclass(frozen=True)
class RepaintJob:
    """One Image Repaint request (inpainting), its images fetched and decoded: `mask` white where the
    image is redrawn, at the image's size; None redraws the whole image. The output is one image at the
    image's size, identical to it wherever the mask is black."""

    request: RepaintRequest
    image: Image.Image
    mask: Image.Image | None = None
    steps: int | None = None  # None: the preset's default
    sources: Mapping[str, str] = field(default_factory=dict)  # as Job's: for engines that forward it
    handoff: Handoff | None = None

    def __post_init__(self) -> None:
        if self.request.seed is None:
            raise ValueError("a job's request has its seed decided: use request.with_seed()")

    @property
    def seed(self) -> int:
        assert self.request.seed is not None  # __post_init__
        return self.request.seed

    @classmethod
    def from_request(
        cls, request: RepaintRequest, load_image: Callable[[str, str], Image.Image], **extra: Any
    ) -> RepaintJob:
        """The job a validated repaint request asks for, its images fetched and checked against the page's
        limits (ImageInvalidError naming the field)."""
        from ref2img.protocol import check_repaint_images

        image = load_image(request.init_image, "init_image")
        mask = load_image(request.mask_url, "mask_url") if request.mask_url else None
        try:
            check_repaint_images(image.size, mask.size if mask is not None else None)
        except ValueError as exc:
            raise ImageInvalidError(str(exc)) from None
        return cls(request=request.with_seed(), image=image, mask=mask, **extra)

    @classmethod
    def for_images(
        cls, image: Image.Image, mask: Image.Image | None = None, *, steps: int | None = None, **wire_fields: Any
    ) -> RepaintJob:
        """A job from images in memory (tests, benches): the wire fields checked as a request's would be."""
        request = RepaintRequest.model_validate({"init_image": IN_MEMORY, **wire_fields}).with_seed()
        return cls(request, image, mask, steps)


def _never() -> bool:
    return False


def _ignore(done: int, total: int) -> None:
    return None


# (done, total, render): called after each step when given; `render()` makes a small RGB preview of the
# current latents (first image of the batch), so a caller pays for a preview only when it wants one.
PreviewCallback = Callable[[int, int, Callable[[], "Image.Image"]], None]


class Engine(Protocol):
    """What turns a job into images."""

    def generate(
        self,
        job: Job,
        on_progress: ProgressCallback = _ignore,
        should_cancel: CancelCheck = _never,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]: ...

    def recognize(self, image: Image.Image, control_type: ControlType) -> Image.Image: ...

    def repaint(
        self,
        job: RepaintJob,
        on_progress: ProgressCallback = _ignore,
        should_cancel: CancelCheck = _never,
        on_preview: PreviewCallback | None = None,
    ) -> list[Image.Image]: ...
