"""OpenAI's images API in ref2img's terms (docs/openai.md): the model names, the form fields of an edit
as a `CreateRequest` body, and OpenAI's error envelope for every error of those routes.

Kept free of FastAPI so that the mapping reads (and is tested) on its own; the routes are in
`openai_routes.py`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from fastapi.responses import JSONResponse

from ref2img.protocol import (
    BATCH_SIZE_RANGE,
    SEED_RANGE,
    SIZE_RANGE,
    STEPS_RANGE,
    ControlType,
    ErrorCode,
    renamed_field,
)

PATHS = ("/v1/images/", "/v1/models")  # the routes whose errors are in OpenAI's envelope
MODEL_PREFIX = "ref2img-"
MODES = {"edge": ControlType.EDGE, "pose": ControlType.POSE, "subject": ControlType.SUBJECT, "depth": ControlType.DEPTH}
# An edit that names no model keeps the reference's subject: the nearest to OpenAI's "edit this image".
DEFAULT_MODEL = f"{MODEL_PREFIX}subject"
PARTIAL_IMAGES_RANGE = (0, 3)  # as OpenAI's `partial_images`
SIZE_HELP = f"WIDTHxHEIGHT with each side from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} (e.g. 1024x1536), or auto"
# Our wire fields under the names an OpenAI client sent them.
# How a task refused by the content filter starts its reason (provenance/content_filter.py): OpenAI's
# clients know that refusal as a 400 `content_policy_violation`.
CONTENT_POLICY = "refused by the content policy"

PARAM_OF_FIELD = {
    "width": "size",
    "height": "size",
    "batch_size": "n",
    "reference_image": "image",
    "init_image": "image",
    "mask_url": "mask",
    "control_type": "model",
}


class OpenAIError(Exception):
    """An error of the OpenAI-style routes, rendered as `{"error": {message, type, param, code}}`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = dict(headers or {})

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def bad_request(param: str, message: str, code: str = "invalid_value") -> OpenAIError:
    return OpenAIError(400, f"{param}: {message}", param=param, code=code)


def owns(path: str) -> bool:
    return path.startswith(PATHS)


# -- models --------------------------------------------------------------------------------------
def model_names(presets: list[str]) -> list[str]:
    """`ref2img-<mode>` for every mode, then the same with each of this server's presets named:
    `ref2img-edge:sdxl` (the plain names run on the server's default preset)."""
    plain = [f"{MODEL_PREFIX}{mode}" for mode in MODES]
    return plain + [f"{name}:{preset}" for preset in presets for name in plain]


def parse_model(value: str | None, presets: list[str]) -> tuple[ControlType, str | None]:
    """The control mode an OpenAI `model` names (none: DEFAULT_MODEL), and the preset its suffix names
    (None: the server's default)."""
    name = value or DEFAULT_MODEL
    if name not in model_names(presets):
        raise OpenAIError(
            400,
            f"model: {name[:100]!r} is not a model of this server; use one of {', '.join(model_names(presets))}",
            param="model",
            code="model_not_found",
        )
    mode, _, preset = name.partition(":")
    return MODES[mode.removeprefix(MODEL_PREFIX)], preset or None


# -- fields --------------------------------------------------------------------------------------
_SIZE = re.compile(r"([0-9]{1,5})x([0-9]{1,5})")  # ASCII digits only: int() would take "١٠٢٤"


def parse_size(value: str | None, reference: tuple[int, int] | None) -> tuple[int, int]:
    """`WxH` as given (the protocol checks the range), or `auto`: the reference's aspect ratio at about
    1024² (each side a multiple of 8 within the range)."""
    if value in (None, "", "auto"):
        return auto_size(reference)
    found = _SIZE.fullmatch(str(value).strip())
    if not found:
        raise bad_request("size", f"must be {SIZE_HELP} (got {str(value)[:40]!r})")
    return int(found.group(1)), int(found.group(2))


def auto_size(reference: tuple[int, int] | None, area: int = 1024 * 1024) -> tuple[int, int]:
    if not reference or not all(reference):
        return 1024, 1024
    width, height = reference
    scale = (area / (width * height)) ** 0.5
    low, high = SIZE_RANGE

    def side(value: float) -> int:
        return max(low, min(high, round(value * scale / 8) * 8))

    return side(width), side(height)


def integer(form: Mapping[str, str], param: str, default: int | None, low: int, high: int) -> int | None:
    raw = form.get(param)
    if raw in (None, ""):
        return default
    try:
        return int(str(raw))
    except ValueError:
        raise bad_request(param, f"must be an integer from {low} to {high} (got {str(raw)[:40]!r})") from None


def count(form: Mapping[str, str], param: str, low: int, high: int) -> int:
    """An integer that must be within its range here (`n`: 0 is no count of images, not a default)."""
    value = integer(form, param, low, low, high)
    assert value is not None  # a default is given
    if not low <= value <= high:
        raise bad_request(param, f"must be an integer from {low} to {high} (got {value})")
    return value


def number(form: Mapping[str, str], param: str) -> float | None:
    raw = form.get(param)
    if raw in (None, ""):
        return None
    try:
        return float(str(raw))
    except ValueError:
        raise bad_request(param, f"must be a number (got {str(raw)[:40]!r})") from None


def flag(form: Mapping[str, str], param: str) -> bool:
    raw = str(form.get(param) or "false").strip().lower()
    if raw not in ("true", "false", "1", "0"):
        raise bad_request(param, f"must be true or false (got {raw[:20]!r})")
    return raw in ("true", "1")


@dataclass(frozen=True)
class EditForm:
    """The fields of `POST /v1/images/edits` ref2img reads (the images come separately)."""

    prompt: str
    mode: ControlType
    preset: str | None  # one of the server's presets (the model name's suffix); None: its default
    n: int
    size: str | None
    response_format: str
    stream: bool
    partial_images: int
    extras: dict  # our own fields as the wire names them (control_intensity, seed, negative_prompt, steps, guidance)

    @classmethod
    def parse(cls, form: Mapping[str, str], presets: list[str]) -> EditForm:
        response_format = str(form.get("response_format") or "b64_json")
        if response_format not in ("b64_json", "url"):
            raise bad_request("response_format", f"must be b64_json or url (got {response_format[:20]!r})")
        output_format = str(form.get("output_format") or "png")
        if output_format != "png":
            raise bad_request("output_format", f"must be png: ref2img makes PNG images (got {output_format[:20]!r})")
        low, high = PARTIAL_IMAGES_RANGE
        partial = integer(form, "partial_images", 0, low, high)
        if partial is None or not low <= partial <= high:
            raise bad_request("partial_images", f"must be an integer from {low} to {high} (got {partial})")
        given = {
            "control_intensity": number(form, "control_intensity"),
            "seed": integer(form, "seed", None, *SEED_RANGE),
            "negative_prompt": str(form.get("negative_prompt") or "") or None,
            "steps": integer(form, "steps", None, *STEPS_RANGE),
            "guidance_scale": number(form, "guidance_scale"),
        }
        extras = {field: value for field, value in given.items() if value is not None}
        mode, preset = parse_model(form.get("model"), presets)
        return cls(
            prompt=str(form.get("prompt") or ""),
            mode=mode,
            preset=preset,
            n=count(form, "n", *BATCH_SIZE_RANGE),
            size=form.get("size"),
            response_format=response_format,
            stream=flag(form, "stream"),
            partial_images=partial,
            extras=extras,
        )

    def create_body(self, reference: str, init: str | None, size: tuple[int, int]) -> dict:
        """The Tomoviee create body this edit asks for (checked by the protocol like any other)."""
        body = {
            "prompt": self.prompt,
            "reference_image": reference,
            "control_type": self.mode.value,
            "width": size[0],
            "height": size[1],
            "batch_size": self.n,
            **self.extras,
        }
        if self.preset is not None:
            body["model"] = self.preset
        if init is not None:
            body["init_image"] = init
        return body


# -- errors --------------------------------------------------------------------------------------
# Our error codes as OpenAI's API answers the same kind of failure: HTTP status, type, code.
_BY_CODE = {
    ErrorCode.UNAUTHORIZED: (401, "invalid_request_error", "invalid_api_key"),
    ErrorCode.INVALID_PARAMETER: (400, "invalid_request_error", "invalid_value"),
    ErrorCode.IMAGE_FETCH_FAILED: (400, "invalid_request_error", "invalid_image"),
    ErrorCode.IMAGE_INVALID: (400, "invalid_request_error", "invalid_image"),
    ErrorCode.TASK_NOT_FOUND: (404, "invalid_request_error", "not_found"),
    ErrorCode.BUSY: (429, "rate_limit_error", "rate_limit_exceeded"),
    ErrorCode.ENGINE_UNAVAILABLE: (503, "server_error", "engine_unavailable"),
    ErrorCode.INTERNAL: (500, "server_error", None),
}
_FIELD = re.compile(r"([A-Za-z_][A-Za-z0-9_\[\].]*): ")


def from_wire_error(code: int, message: str, status: int, headers: Mapping[str, str] | None = None) -> OpenAIError:
    """A wire error (`ApiError`, our envelope's code and msg) in OpenAI's terms; the field our message
    starts with becomes `param`, spelt as the OpenAI client sent it."""
    try:
        mapped = _BY_CODE.get(ErrorCode(code))
    except ValueError:
        mapped = None
    http_status, kind, error_code = mapped or (status if status >= 400 else 400, "invalid_request_error", None)
    if status == 404:
        http_status = 404  # an unknown route
    param = None
    found = _FIELD.match(message)
    if found and code not in (ErrorCode.UNAUTHORIZED, ErrorCode.BUSY):
        field = found.group(1)
        param = PARAM_OF_FIELD.get(field.split("[")[0].split(".")[0], field)
        message = renamed_field(message, PARAM_OF_FIELD)
    return OpenAIError(http_status, message, param=param, code=error_code, type=kind, headers=headers)
