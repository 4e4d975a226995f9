"""Security headers on every answer: no MIME sniffing, no framing (clickjacking), no referrer (signed
file URLs carry their signatures in the query), and a Content-Security-Policy per kind of page.

The studio loads only its own script and stylesheet, and talks only to this origin; its images may
come from the URLs a user types in, so `img-src` allows http(s). Swagger UI (`/docs`, served from the
package) needs its one inline script. Everything else is JSON or images and may load nothing.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STUDIO_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob: https: http:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "connect-src 'self'; img-src 'self' data:; base-uri 'none'; frame-ancestors 'none'"
)
API_CSP = "default-src 'none'; frame-ancestors 'none'"


def policy_for(path: str) -> str:
    if path == "/" or path.startswith("/studio/"):
        return STUDIO_CSP
    if path == "/docs" or path.startswith("/docs/"):
        return DOCS_CSP
    return API_CSP


def security_headers(path: str) -> dict[str, str]:
    """The headers every answer for `path` carries."""
    return {
        "Content-Security-Policy": policy_for(path),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }


class SecurityHeaders:
    """Adds `security_headers` to every answer that passes through the middleware stack. A 500 does not:
    Starlette answers it from its outermost layer, so that handler adds them itself (server/errors.py)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
