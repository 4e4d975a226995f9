"""What `/openapi.json` says about the wire: request bodies from the protocol's own models and the
`{"code", "msg", "data"}` envelope as every answer's shape, so schema-driven clients and fuzzers
(schemathesis) see the API as it is.

The routes read their JSON bodies by hand (to answer 680001 with the cloud's messages rather than
FastAPI's 422), so FastAPI cannot see the bodies' models: they are declared here instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from ref2img.protocol import MAX_TASK_ID_CHARS, MAX_WAIT_S, CreateRequest, RecognizeRequest, RepaintRequest

COMPONENT_REF = "#/components/schemas/{model}"


class Envelope(BaseModel):
    """Every answer of the wire protocol, errors included (DESIGN.md §1)."""

    code: int = Field(description="0 on success, else an error code (680001 invalid parameter, …)")
    msg: str = Field(description="'success', or what is wrong, naming the field")
    data: dict[str, Any] | None = Field(description="the result; null on errors")


class TaskLookup(BaseModel):
    task_id: str = Field(min_length=1, max_length=MAX_TASK_ID_CHARS)
    wait: float = Field(default=0, ge=0, le=MAX_WAIT_S, description="long poll: answer as soon as the status changes")


class TaskRef(BaseModel):
    task_id: str = Field(min_length=1, max_length=MAX_TASK_ID_CHARS)


BODY_MODELS: list[type[BaseModel]] = [CreateRequest, RecognizeRequest, RepaintRequest, TaskLookup, TaskRef, Envelope]

# 401 (bad credentials) and 429 (busy, Retry-After) are the only statuses besides 200 a wire route answers.
ENVELOPE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "the envelope; `code` says whether it worked", "model": Envelope},
    401: {"description": "140013: missing or wrong credentials", "model": Envelope},
    429: {
        "description": "680005: queue full, task store locked or full, or too many failed authentications "
        "(Retry-After)",
        "model": Envelope,
    },
}


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route whose body is `model` as JSON."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": COMPONENT_REF.format(model=model.__name__)}}},
        }
    }


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for operations in schema["paths"].values():
                for operation in operations.values():  # FastAPI documents a 422 no route answers (680001 is 200)
                    operation.get("responses", {}).pop("422", None)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for unused in ("HTTPValidationError", "ValidationError"):
                components.pop(unused, None)
            for model in BODY_MODELS:
                # by_alias=False: the fields' own names; the aliases (`image`, `image_num`) are accepted too
                model_schema = model.model_json_schema(ref_template=COMPONENT_REF, by_alias=False)
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the schema
