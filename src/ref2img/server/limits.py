"""One cap on request bodies, for every route, before any parser sees them.

Starlette spools multipart uploads to disk whole before a route runs, so a cap checked in the route
comes after a 10 GB upload has filled the data disk. This ASGI middleware refuses a declared
Content-Length over the cap before the app runs, and counts the bytes of bodies sent without one
(chunked), stopping the read the moment they pass it. (Starlette's own RequestBodyLimitMiddleware
does the counting too, but answers a plain-text 413 in place of whatever the app answers, outside
the protocol's envelope.)
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ref2img.protocol import ErrorCode
from ref2img.server.errors import error_response


class BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on untouched (it turns any other
    error into "There was an error parsing the body"); the app's handler answers it in the envelope."""

    def __init__(self, max_bytes: int):
        super().__init__(413, body_too_large_message(max_bytes))


def body_too_large_message(max_bytes: int) -> str:
    return f"body: must be at most {max_bytes // (1024 * 1024)} MB"


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            # The rest of the body is never read; the connection closes after the answer.
            response = error_response(
                Request(scope),
                ErrorCode.INVALID_PARAMETER,
                body_too_large_message(self.max_bytes),
                headers={"Connection": "close"},
            )
            await response(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counted_receive, send)
