"""Wire models and constraints of the Tomoviee `tm_reference_img2img` protocol.

The single source of truth for field names, types and ranges: the SDK validates with it before a
request leaves, the server validates with it when one arrives, and the CLI's in-process path uses
it too. Every rejection is a :class:`ParameterError` naming the field and the allowed range.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import math
import re
import secrets
from collections.abc import Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    field_validator,
    model_validator,
)

__all__ = [
    "ALLOWED",
    "BATCH_SIZE_RANGE",
    "INTENSITY_RANGE",
    "MAX_PARAMS_CHARS",
    "MAX_PROMPT_CHARS",
    "MAX_TASK_ID_CHARS",
    "MAX_WAIT_S",
    "RECOGNIZE_CONTROL_TYPES",
    "SEED_RANGE",
    "SIZE_RANGE",
    "Control",
    "ControlType",
    "CreateRequest",
    "ErrorCode",
    "ParameterError",
    "RecognizeRequest",
    "RepaintRequest",
    "TaskStatus",
    "basic_token",
    "check_repaint_images",
    "parse_create_request",
    "parse_recognize_request",
    "parse_repaint_request",
    "random_seed",
    "text_problem",
]

SIZE_RANGE = (512, 2048)
BATCH_SIZE_RANGE = (1, 4)
INTENSITY_RANGE = (0.0, 1.0)
MAX_PROMPT_CHARS = 2000
MAX_PARAMS_CHARS = 8192  # passthrough data (an order id, a JSON blob); echoed by every query, event and callback
SEED_RANGE = (0, 2**32 - 1)
MAX_MODEL_NAME_CHARS = 100
MAX_LORAS = 4
LORA_WEIGHT_RANGE = (-2.0, 2.0)
STEPS_RANGE = (1, 200)  # `steps` (our extension): denoising steps; none = the preset's own
GUIDANCE_RANGE = (0.0, 30.0)  # `guidance_scale` (our extension): classifier-free guidance; none = the preset's
MAX_TASK_ID_CHARS = 100  # ours are 25; room for the cloud's and for proxies that prefix them
MAX_WAIT_S = 30.0  # the longest long poll of a task query


class ControlType(str, enum.Enum):
    """What of the reference image the output keeps. Sent on the wire as the strings "0".."3"."""

    EDGE = "0"
    POSE = "1"
    SUBJECT = "2"
    DEPTH = "3"

    @classmethod
    def parse(cls, value: str | int | ControlType) -> ControlType:
        """Accept the wire string, an int 0..3, or a name (edge, pose, subject, depth)."""
        if isinstance(value, ControlType):
            return value
        if isinstance(value, bool):  # bool is an int subclass: never a control type
            raise ValueError
        text = str(value).strip().lower()
        for member in cls:
            if text in (member.value, member.name.lower()):
                return member
        raise ValueError(f"unknown control type {value!r}")

    @property
    def label(self) -> str:
        """What the mode keeps, in a user's words (the studio's captions)."""
        return {"EDGE": "edges"}.get(self.name, self.name.lower())


class TaskStatus(enum.IntEnum):
    QUEUED = 1
    PROCESSING = 2
    SUCCEEDED = 3
    FAILED = 4
    CANCELLED = 5
    TIMED_OUT = 6

    @property
    def is_final(self) -> bool:
        return self >= TaskStatus.SUCCEEDED

    @property
    def label(self) -> str:
        """The status in a user's words (the studio's)."""
        return {"PROCESSING": "running", "SUCCEEDED": "done", "TIMED_OUT": "timed out"}.get(
            self.name, self.name.lower()
        )


class ErrorCode(enum.IntEnum):
    OK = 0
    UNAUTHORIZED = 140013
    INVALID_PARAMETER = 680001
    IMAGE_FETCH_FAILED = 680002
    IMAGE_INVALID = 680003
    TASK_NOT_FOUND = 680004
    BUSY = 680005
    ENGINE_UNAVAILABLE = 680006
    INTERNAL = 680009


class ParameterError(ValueError):
    """A request field is missing or outside its allowed range (wire code 680001)."""

    code = ErrorCode.INVALID_PARAMETER

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _wire_control_type(value: Any) -> ControlType:
    # The cloud documents a string; ints 0..3 are accepted too, since untyped clients send them.
    if isinstance(value, str) and not value.strip().isdigit():
        raise ValueError("not a control type")
    return ControlType.parse(value)


def _no_callback_if_empty(value: Any) -> Any:
    # The docs' examples send `"callback": ""` for "no callback" (the field is optional).
    return None if isinstance(value, str) and not value.strip() else value


def basic_token(app_key: str, app_secret: str) -> str:
    """The `Authorization` header value of every call: `Basic base64(app_key:app_secret)`."""
    return "Basic " + base64.b64encode(f"{app_key}:{app_secret}".encode()).decode()


# The control types recognition takes, in the words of its error messages (server and SDK alike).
RECOGNIZE_CONTROL_TYPES = 'one of "0" (edge), "1" (pose), "2" (the subject\'s mask) or "3" (depth)'

# What each field allows, in the words used by error messages and docs.
ALLOWED: dict[str, str] = {
    "prompt": f"a non-empty string of at most {MAX_PROMPT_CHARS} characters",
    "negative_prompt": f"a string of at most {MAX_PROMPT_CHARS} characters",
    "reference_image": "an image URL (http, https or data:image/...) or an uploaded file URL",
    "init_image": "an image URL (http, https or data:image/...) or an uploaded file URL",
    "control_type": 'one of "0" (edge), "1" (pose), "2" (subject), "3" (depth)',
    "control_intensity": "a number from 0 to 1",
    "width": f"an integer from {SIZE_RANGE[0]} to {SIZE_RANGE[1]}",
    "height": f"an integer from {SIZE_RANGE[0]} to {SIZE_RANGE[1]}",
    "batch_size": f"an integer from {BATCH_SIZE_RANGE[0]} to {BATCH_SIZE_RANGE[1]}",
    "seed": f"an integer from {SEED_RANGE[0]} to {SEED_RANGE[1]}",
    "steps": f"an integer from {STEPS_RANGE[0]} to {STEPS_RANGE[1]} (denoising steps; none: the model's own)",
    "guidance_scale": f"a number from {GUIDANCE_RANGE[0]:g} to {GUIDANCE_RANGE[1]:g} (none: the model's own)",
    "model": "the name of a preset this server offers (GET /v1/info; none: its default)",
    "loras": f"a list of at most {MAX_LORAS} objects {{name, weight?}} naming LoRAs of this server (GET /v1/loras)",
    "loras[]": "an object {name, weight?}",
    "loras[].name": "the name of a LoRA of this server (GET /v1/loras): letters, digits, '.', '_' or '-'",
    "loras[].weight": f"a number from {LORA_WEIGHT_RANGE[0]:g} to {LORA_WEIGHT_RANGE[1]:g} (1 by default)",
    "callback": "an http or https URL",
    "mask_url": "an image URL (http, https or data:image/...) or an uploaded file URL; white = redraw",
    "params": f"a string of at most {MAX_PARAMS_CHARS} characters (passed through untouched)",
    "controls": "a list of 1 to 3 objects {type, image?, intensity?, start?, end?, map?}",
    "controls[]": "an object {type, image?, intensity?, start?, end?, map?}",
    "controls[].type": 'one of "edge", "pose" or "depth" (or "0", "1", "3"); the subject is control_type "2"',
    "controls[].image": "an image URL (http, https or data:image/...) or an uploaded file URL",
    "controls[].intensity": "a number from 0 to 1",
    "controls[].start": "a number from 0 to 1, before end",
    "controls[].end": "a number from 0 to 1, after start",
    "controls[].map": "true when image is a ready control map, else false",
}

MAX_URL_CHARS = 30 * 1024 * 1024  # data: URIs carry whole images


def renamed_field(message: str, names: Mapping[str, str]) -> str:
    """An error message (`batch_size: must be …`) with its leading field spelt as a caller named it
    (`--batch: …` on the command line, `n: …` for an OpenAI client, `reference: …` for an MCP tool)."""
    field, sep, rest = message.partition(": ")
    return f"{names[field]}: {rest}" if sep and field in names else message


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored or passed on as text, or None. A NUL cannot enter PostgreSQL text,
    and a lone surrogate (JSON allows "\\ud800") cannot be written as UTF-8 anywhere (pydantic refuses
    those in models itself; this covers the fields read by hand)."""
    if "\x00" in value:
        return "it holds a NUL character"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "it is not valid Unicode"
    return None


def _plain_text(value: str) -> str:
    problem = text_problem(value)
    if problem:
        raise ValueError(problem)
    return value


# Every free-text field: whatever Unicode a user writes, except what no store or engine can hold.
Text = Annotated[str, AfterValidator(_plain_text)]


def _strict_int(value: Any) -> Any:
    # JSON numbers like 1024.0 are integers too; strings and booleans are not.
    if isinstance(value, bool):
        raise ValueError("booleans are not numbers")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _finite_number(value: Any) -> Any:
    # Booleans are ints to Python, and NaN or infinity pass no range check: neither is a number here.
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        raise ValueError("not a finite number")
    return value


def random_seed(derived_from: str | None = None) -> int:
    """The seed of a request that names none: random, or (for a request that may be resent, such as one
    with an idempotency key) derived from `derived_from`, so that the resend asks for the same images."""
    if derived_from is None:
        return secrets.randbelow(2**31)
    return int.from_bytes(hashlib.sha256(derived_from.encode()).digest()[:4], "big") >> 1


MAX_CONTROLS = 3
CONTROL_MODES = ("edge", "pose", "depth")  # what a `controls` entry may keep; the subject is `control_type` "2"


def _control_mode(value: Any) -> ControlType:
    try:
        kind = ControlType.parse(value)
    except ValueError:
        raise ValueError("not a control type") from None
    if kind is ControlType.SUBJECT:
        raise ValueError('the subject is control_type "2", not a control')
    return kind


class Control(BaseModel):
    """One entry of `controls` (our extension): a map the output follows, from its own image (or the
    reference when `image` is absent), with its own intensity and, optionally, the share of the steps it
    acts on (`start`..`end`; default from the intensity, as a single control's). `map`: the image is a
    ready edge/pose/depth map, so no annotator runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: ControlType
    image: Text | None = Field(default=None, min_length=1, max_length=MAX_URL_CHARS)
    intensity: float = Field(default=0.5, ge=INTENSITY_RANGE[0], le=INTENSITY_RANGE[1], strict=True)
    start: float = Field(default=0.0, ge=0.0, le=1.0, strict=True)
    end: float | None = Field(default=None, ge=0.0, le=1.0, strict=True)
    map: bool = False

    def __init__(self, type: Any = None, /, **data: Any):  # Control("pose", image=..., intensity=0.8)
        super().__init__(**({"type": type} if type is not None else {}), **data)

    _type = field_validator("type", mode="before")(_control_mode)

    @field_validator("intensity", "start", "end", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("not a finite number")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Control:
        if self.end is not None and self.end <= self.start:
            raise ValueError(f"end ({self.end:g}) must be after start ({self.start:g})")
        if self.map and self.image is None:
            raise ValueError("map: true needs the map itself as image")
        return self

    @field_serializer("type")
    def _type_name(self, kind: ControlType) -> str:
        return kind.name.lower()


class LoraRef(BaseModel):
    """One entry of `loras` (our extension): a LoRA of the server's folders by name, and its weight."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=MAX_MODEL_NAME_CHARS, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
    weight: float = Field(default=1.0, ge=LORA_WEIGHT_RANGE[0], le=LORA_WEIGHT_RANGE[1], strict=True)

    _weight = field_validator("weight", mode="before")(_finite_number)


class CreateRequest(BaseModel):
    """Body of `POST /v1/open/capacity/application/tm_reference_img2img` (flat JSON).

    The one request model: the server parses it, the SDK, CLI, MCP and studio build it, the runner
    turns it into the engine's `Job`, and the cloud engine forwards it. A new field is added here, and
    read by the engine that uses it; every other boundary carries it as it is.
    """

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    # What the Tomoviee cloud is not sent when a server forwards a task there: our extensions, which it
    # does not know, and the delivery fields, which the forwarding server handles itself.
    # (`controls`, `steps` and `guidance_scale` never reach it: such a task stays on the local GPUs.)
    NOT_FORWARDED: ClassVar[frozenset[str]] = frozenset(
        {"seed", "negative_prompt", "callback", "params", "controls", "steps", "guidance_scale", "model", "loras"}
    )

    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    reference_image: Text = Field(
        min_length=1, max_length=MAX_URL_CHARS, validation_alias=AliasChoices("reference_image", "image")
    )
    control_type: ControlType
    control_intensity: float = Field(default=0.5, ge=INTENSITY_RANGE[0], le=INTENSITY_RANGE[1], strict=True)
    width: int = Field(default=1024, ge=SIZE_RANGE[0], le=SIZE_RANGE[1], strict=True)
    height: int = Field(default=1024, ge=SIZE_RANGE[0], le=SIZE_RANGE[1], strict=True)
    batch_size: int = Field(
        default=1,
        ge=BATCH_SIZE_RANGE[0],
        le=BATCH_SIZE_RANGE[1],
        strict=True,
        validation_alias=AliasChoices("batch_size", "image_num"),
    )
    init_image: Text | None = Field(default=None, min_length=1, max_length=MAX_URL_CHARS)
    callback: Text | None = Field(default=None, max_length=2048)
    params: Text | None = Field(default=None, max_length=MAX_PARAMS_CHARS)
    # Our extensions; a Tomoviee client never needs them.
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1], strict=True)
    negative_prompt: Text | None = Field(default=None, max_length=MAX_PROMPT_CHARS)
    controls: tuple[Control, ...] | None = Field(default=None, min_length=1, max_length=MAX_CONTROLS)
    steps: int | None = Field(default=None, ge=STEPS_RANGE[0], le=STEPS_RANGE[1], strict=True)
    guidance_scale: float | None = Field(default=None, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1], strict=True)
    model: Text | None = Field(default=None, min_length=1, max_length=MAX_MODEL_NAME_CHARS)  # a preset's name
    loras: tuple[LoraRef, ...] | None = Field(default=None, min_length=1, max_length=MAX_LORAS)

    @property
    def keeps_subject(self) -> bool:
        return self.control_type is ControlType.SUBJECT

    @property
    def local_only(self) -> list[str]:
        """The fields set that only a local engine has a knob for (the Tomoviee cloud has none of them)."""
        return [name for name in ("controls", "steps", "guidance_scale", "loras") if getattr(self, name) is not None]

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank prompt")
        return value

    _control_type = field_validator("control_type", mode="before")(_wire_control_type)
    _callback = field_validator("callback", mode="before")(_no_callback_if_empty)

    @field_validator("width", "height", "batch_size", "seed", "steps", mode="before")
    @classmethod
    def _integers(cls, value: Any) -> Any:
        return _strict_int(value)

    _numbers = field_validator("control_intensity", "guidance_scale", mode="before")(_finite_number)

    def resolved_init_image(self) -> str | None:
        """The init image the engine uses: subject mode (2) needs one and defaults to the reference (not
        when controls keep the structure: the subject then comes from the reference alone)."""
        if self.init_image is None and self.control_type is ControlType.SUBJECT and not self.controls:
            return self.reference_image
        return self.init_image

    def to_wire(self) -> dict[str, Any]:
        """The flat JSON body, with `control_type` as its string and unset extensions left out."""
        return self.model_dump(mode="json", exclude_none=True)

    def with_seed(self, derived_from: str | None = None) -> CreateRequest:
        """This request with its seed decided (see `random_seed`): the only place a default seed is chosen."""
        return self if self.seed is not None else self.model_copy(update={"seed": random_seed(derived_from)})

    def forwarded(self, sources: dict[str, str]) -> CreateRequest:
        """The request a server sends on to the Tomoviee cloud: the images as the URLs in `sources`
        (field -> URL the cloud can fetch), without the fields in NOT_FORWARDED."""
        return self.model_copy(update={**dict.fromkeys(self.NOT_FORWARDED), **sources})


class RecognizeRequest(BaseModel):
    """Body of `POST /v1/open/capacity/application/tm_reference_img2mask`: the control map of types 0, 1
    and 3, or the subject's foreground mask (type 2), white on black at the input's size."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    control_type: ControlType
    init_image: Text = Field(min_length=1, max_length=MAX_URL_CHARS)
    callback: Text | None = Field(default=None, max_length=2048)
    params: Text | None = Field(default=None, max_length=MAX_PARAMS_CHARS)

    _control_type = field_validator("control_type", mode="before")(_wire_control_type)
    _callback = field_validator("callback", mode="before")(_no_callback_if_empty)


class RepaintRequest(BaseModel):
    """Body of `POST /v1/open/capacity/application/tm_redrawing` (Image Repaint, S8/S9): `prompt`,
    `init_image`, an optional `mask_url` (white = redraw; none: the whole image is redrawn from the
    prompt), `callback`, `params`. The old client arguments `image` and `mask` are aliases. The images'
    own limits (sides, ratio, the mask's size) are checked once they are fetched (`check_repaint_images`)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    NOT_FORWARDED: ClassVar[frozenset[str]] = frozenset({"seed", "negative_prompt", "callback", "params"})

    prompt: Text = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    init_image: Text = Field(
        min_length=1, max_length=MAX_URL_CHARS, validation_alias=AliasChoices("init_image", "image")
    )
    mask_url: Text | None = Field(
        default=None, min_length=1, max_length=MAX_URL_CHARS, validation_alias=AliasChoices("mask_url", "mask")
    )
    callback: Text | None = Field(default=None, max_length=2048)
    params: Text | None = Field(default=None, max_length=MAX_PARAMS_CHARS)
    seed: int | None = Field(default=None, ge=SEED_RANGE[0], le=SEED_RANGE[1], strict=True)
    negative_prompt: Text | None = Field(default=None, max_length=MAX_PROMPT_CHARS)

    _prompt_has_text = field_validator("prompt")(CreateRequest._prompt_has_text.__func__)  # type: ignore[attr-defined]
    _callback = field_validator("callback", mode="before")(_no_callback_if_empty)
    _empty_mask = field_validator("mask_url", mode="before")(_no_callback_if_empty)  # "" = no mask, as for callback
    _integers = field_validator("seed", mode="before")(_strict_int)

    def to_wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def with_seed(self, derived_from: str | None = None) -> RepaintRequest:
        return self if self.seed is not None else self.model_copy(update={"seed": random_seed(derived_from)})

    def forwarded(self, sources: dict[str, str]) -> RepaintRequest:
        return self.model_copy(update={**dict.fromkeys(self.NOT_FORWARDED), **sources})


# Image Repaint's input limits (S8): jpg/png, sides between 512 and 2048, ratio under 3, the mask at the
# image's resolution. The page's "> 512 and < 2048" is read as this project's own size range, ends included.
REPAINT_MAX_RATIO = 3.0


def check_repaint_images(image_size: tuple[int, int], mask_size: tuple[int, int] | None) -> None:
    """ParameterError-like ValueError naming the field when the fetched images break the page's limits."""
    width, height = image_size
    low, high = SIZE_RANGE
    if not (low <= width <= high and low <= height <= high):
        raise ValueError(f"init_image: {width}x{height}: each side must be from {low} to {high} pixels")
    if max(width, height) >= REPAINT_MAX_RATIO * min(width, height):
        raise ValueError(
            f"init_image: {width}x{height}: the long side must be under {REPAINT_MAX_RATIO:g} times the short"
        )
    if mask_size is not None and mask_size != image_size:
        raise ValueError(f"mask_url: {mask_size[0]}x{mask_size[1]} must be the image's resolution, {width}x{height}")


def parse_repaint_request(body: Any) -> RepaintRequest:
    """Validate an Image Repaint body; raise :class:`ParameterError` for the first bad field."""
    if not isinstance(body, dict):
        raise ParameterError("body", "must be a JSON object")
    try:
        return RepaintRequest.model_validate(body)
    except ValidationError as exc:
        raise _first_parameter_error(exc, body, _REPAINT_ALIASES) from None


# The recognition page's fixed template id (D3, D4a, D4b: `template_info[].template_id`).
RECOGNIZE_TEMPLATE_ID = "tm_reference_img2mask_template_spatial"
STORAGE_INFO_FORM = '{"input": {"oss": {"type": 0}}, "output": {"url": {"expire_time": N}}} (either part optional)'


def parse_recognize_request(body: Any) -> RecognizeRequest:
    """Validate a recognition body, flat or in the documented `template_info[0].input_params` wrapping.
    The page's other fields (`wsid`, `storage_info`, `template_info[].template_id`) are checked as it
    describes them, when sent; the published skill sends none of them, so none is required."""
    if not isinstance(body, dict):
        raise ParameterError("body", "must be a JSON object")
    _check_recognize_extras(body)
    template = body.get("template_info")
    if isinstance(template, list) and template and isinstance(template[0], dict):
        inner = template[0].get("input_params")
        if isinstance(inner, dict):
            body = {**{k: v for k, v in body.items() if k != "template_info"}, **inner}
    try:
        return RecognizeRequest.model_validate(body)
    except ValidationError as exc:
        raise _first_parameter_error(exc, body) from None


def _check_recognize_extras(body: dict[str, Any]) -> None:
    wsid = body.get("wsid")
    if wsid is not None and (isinstance(wsid, bool) or not isinstance(wsid, int) or wsid < 0):
        raise ParameterError("wsid", f"must be a non-negative integer (the caller's user id; got {wsid!r})")
    template = body.get("template_info")
    if template is not None:
        if not isinstance(template, list) or not template or not all(isinstance(t, dict) for t in template):
            raise ParameterError("template_info", "must be a non-empty list of objects")
        for entry in template:
            if entry.get("template_id", RECOGNIZE_TEMPLATE_ID) != RECOGNIZE_TEMPLATE_ID:
                raise ParameterError(
                    "template_info[].template_id",
                    f"must be {RECOGNIZE_TEMPLATE_ID!r} (got {entry['template_id']!r})",
                )
    storage = body.get("storage_info")
    if storage is not None and not _documented_storage_info(storage):
        # The docs describe only this form (the cloud's own storage, a signed URL that expires); they
        # name no bucket, endpoint or credentials, so results cannot go to the caller's own storage.
        raise ParameterError(
            "storage_info",
            f"must be {STORAGE_INFO_FORM}: results are served from this server's storage as URLs; "
            "writing them to your own object storage is not supported (the docs name no bucket or credentials)",
        )


def _documented_storage_info(storage: Any) -> bool:
    if not isinstance(storage, dict) or set(storage) - {"input", "output"}:
        return False
    given_input, given_output = storage.get("input"), storage.get("output")
    if given_input is not None and given_input != {"oss": {"type": 0}}:
        return False
    if given_output is None:
        return True
    expire = given_output.get("url", {}).get("expire_time") if isinstance(given_output, dict) else None
    return (
        set(given_output) == {"url"}
        and set(given_output["url"]) == {"expire_time"}
        and isinstance(expire, int)
        and not isinstance(expire, bool)
        and expire >= 1
    )


# The older skill docs' size fields (S11): `resolution` "1024*1024" and `aspect_ratio` "16:9".
LEGACY_SIZE_FIELDS = ("resolution", "aspect_ratio")
DEFAULT_RESOLUTION = "1024*1024"  # our default width × height


def legacy_size(resolution: Any, aspect_ratio: Any) -> tuple[int, int]:
    """Width and height from the legacy fields: `resolution` "W*H" alone is the size; with
    `aspect_ratio` "a:b" it gives the pixel area, kept at that ratio, then scaled into 512..2048 per
    side if it falls outside (the legacy default "512*512" at 16:9 would be 680×384), and rounded to
    multiples of 8."""
    text = DEFAULT_RESOLUTION if resolution is None else resolution
    parts = text.replace("x", "*").replace("X", "*").split("*") if isinstance(text, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ParameterError("resolution", f'must be "W*H" with positive integers, e.g. "1024*1024" (got {text!r})')
    width, height = (int(p) for p in parts)
    if aspect_ratio is None:
        for name, side in (("width", width), ("height", height)):
            if not SIZE_RANGE[0] <= side <= SIZE_RANGE[1]:
                raise ParameterError(
                    "resolution", f"{name} must be from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} (got {text!r})"
                )
        return width, height
    ratio = aspect_ratio.split(":") if isinstance(aspect_ratio, str) else []
    if len(ratio) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in ratio):
        raise ParameterError(
            "aspect_ratio", f'must be "a:b" with positive integers, e.g. "16:9" (got {aspect_ratio!r})'
        )
    a, b = (int(p) for p in ratio)
    if max(a, b) / min(a, b) > SIZE_RANGE[1] / SIZE_RANGE[0]:
        raise ParameterError("aspect_ratio", f"must be at most 4:1 either way (got {aspect_ratio!r})")
    wide = math.sqrt(width * height * a / b)
    tall = wide * b / a
    scale = max(SIZE_RANGE[0] / min(wide, tall), 1.0)
    scale = min(scale, SIZE_RANGE[1] / max(wide, tall))
    return _multiple_of_8(wide * scale), _multiple_of_8(tall * scale)


def _multiple_of_8(side: float) -> int:
    return min(SIZE_RANGE[1], max(SIZE_RANGE[0], round(side / 8) * 8))


def _with_legacy_size(body: dict[str, Any]) -> dict[str, Any]:
    if not any(name in body for name in LEGACY_SIZE_FIELDS):
        return body
    if "width" in body or "height" in body:
        raise ParameterError("resolution", "give either width and height or resolution/aspect_ratio, not both")
    width, height = legacy_size(body.get("resolution"), body.get("aspect_ratio"))
    rest = {key: value for key, value in body.items() if key not in LEGACY_SIZE_FIELDS}
    return {**rest, "width": width, "height": height}


def parse_create_request(body: Any) -> CreateRequest:
    """Validate a create body; raise :class:`ParameterError` for the first bad field. The legacy size
    fields (`resolution`, `aspect_ratio`) become width and height, as `image` and `image_num` are aliases."""
    if not isinstance(body, dict):
        raise ParameterError("body", "must be a JSON object")
    body = _with_legacy_size(body)
    try:
        request = CreateRequest.model_validate(body)
    except ValidationError as exc:
        raise _first_parameter_error(exc, body) from None
    _check_controls(request)
    return request


def _check_controls(request: CreateRequest) -> None:
    """The rule of `controls` beside `control_type`: each type once; `control_type` is "2" (the reference's
    subject is kept too) or the first control's type (a plain request's meaning, unchanged)."""
    if not request.controls:
        return
    seen: set[ControlType] = set()
    for index, control in enumerate(request.controls):
        if control.type in seen:
            raise ParameterError(f"controls[{index}].type", f"{control.type.name.lower()} is given twice")
        seen.add(control.type)
    first = request.controls[0].type
    if request.control_type not in (ControlType.SUBJECT, first):
        raise ParameterError(
            "control_type",
            f"with controls it must be \"2\" (keep the reference's subject too) or the first control's type "
            f'"{first.value}" ({first.name.lower()}); got "{request.control_type.value}"',
        )


_CREATE_ALIASES = {"image": "reference_image", "image_num": "batch_size"}
_REPAINT_ALIASES = {"image": "init_image", "mask": "mask_url"}


def _first_parameter_error(
    exc: ValidationError, body: dict[str, Any], aliases: dict[str, str] = _CREATE_ALIASES
) -> ParameterError:
    error = exc.errors(include_url=False)[0]
    field = str(error["loc"][0]) if error["loc"] else "body"
    field = aliases.get(field, field)
    # a nested field: `controls[1].intensity` (its rule is under `controls[].intensity`)
    path = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in error["loc"][1:])
    pattern = field + re.sub(r"\[\d+\]", "[]", path)
    while pattern not in ALLOWED and pattern != field:  # an unknown nested key: its parent's rule
        pattern = re.sub(r"(\.[^.\[]+|\[\])$", "", pattern)
    allowed = ALLOWED.get(pattern, "a valid value")
    field += path
    if error["type"] == "missing":
        return ParameterError(field, f"is required; must be {allowed}")
    got = error.get("input")
    shown = repr(got) if not isinstance(got, str) or len(got) <= 60 else repr(got[:57] + "...")
    if len(shown) > 80:  # a huge number or a deep list: its start says enough
        shown = shown[:77] + "..."
    reason = "it is not valid Unicode" if error["type"] == "string_unicode" else error.get("ctx", {}).get("error")
    return ParameterError(field, f"must be {allowed} (got {shown}{f': {reason}' if reason else ''})")
