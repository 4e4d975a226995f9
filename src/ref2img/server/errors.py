"""The wire envelope `{"code", "msg", "data"}` and the one exception type routes raise."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect
from starlette.exceptions import HTTPException as StarletteHTTPException

from ref2img.protocol import ErrorCode
from ref2img.server import openai_images
from ref2img.server.headers import security_headers
from ref2img.tasks.store import StoreBusy

log = logging.getLogger("ref2img.server")


class ApiError(Exception):
    def __init__(self, code: ErrorCode, msg: str, http_status: int = 200, headers: dict[str, str] | None = None):
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.http_status = http_status
        self.headers = headers


def ok(data: dict | None) -> dict:
    return {"code": 0, "msg": "success", "data": data}


def envelope_response(code: int, msg: str, status: int = 200, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"code": int(code), "msg": msg, "data": None}, status_code=status, headers=headers)


STORE_RETRY_AFTER_S = 5


def error_response(
    request: Request, code: int, msg: str, status: int = 200, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """Our envelope, or OpenAI's error envelope on the OpenAI-style routes (their clients parse only that)."""
    if openai_images.owns(request.url.path):
        return openai_images.from_wire_error(code, msg, status, headers).response()
    return envelope_response(code, msg, status, headers)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.code, exc.msg, exc.http_status, exc.headers)

    @app.exception_handler(openai_images.OpenAIError)
    async def _openai_error(_request: Request, exc: openai_images.OpenAIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Routing and body-limit errors in the same envelope as the rest, so clients parse one shape.
        if exc.status_code == 413:  # limits.BodyLimit: a protocol error, so HTTP 200 as the rest
            return error_response(request, ErrorCode.INVALID_PARAMETER, exc.detail, headers={"Connection": "close"})
        if exc.status_code == 400:  # a body FastAPI could not parse (broken multipart): the client's input
            return error_response(request, ErrorCode.INVALID_PARAMETER, f"body: could not be parsed ({exc.detail})")
        if exc.status_code == 404:
            return error_response(
                request, ErrorCode.TASK_NOT_FOUND, f"not found: no route {request.url.path[:100]}", 404
            )
        return error_response(
            request, ErrorCode.INVALID_PARAMETER, f"request: {exc.detail}", exc.status_code, exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(part) for part in first.get("loc", ())[1:]) or "request"
        return error_response(request, ErrorCode.INVALID_PARAMETER, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StoreBusy)
    async def _store_unavailable(request: Request, exc: StoreBusy) -> JSONResponse:
        # Locked by another process past the busy timeout, disk full, database down: nothing was
        # accepted, and trying again later works, so it is "busy" rather than an internal error.
        log.warning("the task store refused a request: %s", exc.__cause__ or exc)
        return error_response(
            request,
            ErrorCode.BUSY,
            f"busy: {exc}; retry in {STORE_RETRY_AFTER_S} s",
            429,
            {"Retry-After": str(STORE_RETRY_AFTER_S)},
        )

    @app.exception_handler(ClientDisconnect)
    async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
        # The client hung up, or was cut off at the body deadline, before its body was all there: nothing
        # was accepted, and nobody is left to answer. Not an error of the server's.
        log.info("%s %s: the client left before its body arrived", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = secrets.token_hex(4)
        log.error("unhandled error (incident %s)", incident, exc_info=exc)
        # Answered by Starlette's outermost layer, past the SecurityHeaders middleware: add them here.
        return error_response(
            request,
            ErrorCode.INTERNAL,
            f"internal error (incident {incident})",
            500,
            security_headers(request.url.path),
        )
