"""ref2img studio: the page at `/` and its sign-in. The page itself speaks the public API (the same
routes as every client), authenticated by a session cookie instead of Basic credentials.

Signing in, two ways:
- the link `ref2img serve` prints at start (as Jupyter does), or `ref2img keys studio-link` prints
  later: `http://HOST:PORT/#token=…`. The token is in the fragment, which a browser never sends: the
  page posts it in a request body, and the server answers with a session of this server's `studio`
  key. Each token works once and for 10 minutes (store/studio.py), so a link left in a browser's
  history or a terminal's scrollback is worth nothing;
- an app key and secret, checked like Basic credentials.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from ref2img.auth.keys import create_key
from ref2img.protocol import ControlType, ErrorCode, TaskStatus
from ref2img.server.auth import check_secret
from ref2img.server.errors import ApiError, ok
from ref2img.tasks.store import Store

STATIC = resources.files("ref2img.server") / "static"
STUDIO_KEY_NAME = "studio"

router = APIRouter(include_in_schema=False)


def sign_in_url(store: Store, base_url: str) -> str:
    """A fresh single-use sign-in link (valid 10 minutes), for `serve` at start and `keys studio-link`."""
    return f"{base_url.rstrip('/')}/#token={store.studio.issue_link()}"


class SignInLink:
    """Sign-in links and the key they sign browsers in to."""

    def __init__(self, store: Store):
        self._store = store
        self._app_key: str | None = None
        self._lock = threading.Lock()

    def url(self, base_url: str) -> str:
        return sign_in_url(self._store, base_url)

    def redeem(self, token: str) -> bool:
        """True once for a link issued in the last 10 minutes (a store write: off the event loop)."""
        return self._store.studio.redeem_link(token)

    def app_key(self) -> str:
        """The deployment's `studio` key (made on first use; its secret is never needed: the link vouches)."""
        with self._lock:
            if self._app_key is None:
                live = [
                    row for row in self._store.keys.list() if row.name == STUDIO_KEY_NAME and row.revoked_at is None
                ]
                self._app_key = live[0].app_key if live else create_key(self._store, STUDIO_KEY_NAME).app_key
            return self._app_key


def services(request: Request) -> Any:
    return request.app.state.services


@router.get("/")
def page() -> FileResponse:
    return FileResponse(str(STATIC / "index.html"), headers={"Cache-Control": "no-cache"})


@router.get("/studio/session")
def who(request: Request) -> JSONResponse:
    """The signed-in key and the session's CSRF token (readable by this origin's page only), and the
    protocol's modes and statuses in the words the page shows (so the page spells neither)."""
    svc = services(request)
    session = svc.sessions.read(request)
    words = {
        "modes": {mode.value: mode.label for mode in ControlType},
        "statuses": {str(int(status)): status.label for status in TaskStatus},
    }
    if session is None or not svc.sessions.is_live(session) or not svc.verifier.is_live(session.app_key):
        return JSONResponse(ok({"signed_in": False, **words}))
    return JSONResponse(ok({"signed_in": True, "app_key": session.app_key, "csrf": session.csrf, **words}))


async def sign_in_body(request: Request) -> dict[str, Any]:
    # JSON only: a cross-site form cannot send it without a CORS preflight this server never grants.
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be JSON (Content-Type: application/json)")
    origin = request.headers.get("origin")
    if origin is not None and origin.rstrip("/") != str(request.base_url).rstrip("/"):
        raise ApiError(ErrorCode.UNAUTHORIZED, "unauthorized: sign-in from another site", 403)
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: must be a JSON object")
    return body


@router.post("/studio/session")
async def sign_in(request: Request, body: Annotated[dict, Depends(sign_in_body)]) -> JSONResponse:
    svc = services(request)
    token, app_key, secret = body.get("token"), body.get("app_key"), body.get("app_secret")
    if isinstance(token, str) and token:
        await check_secret(
            request,
            "",
            lambda: svc.studio.redeem(token),
            ApiError(
                ErrorCode.UNAUTHORIZED,
                "unauthorized: this sign-in link was used already, is over 10 minutes old or is not this "
                "server's; print a fresh one with `ref2img keys studio-link --data-dir DIR`",
                401,
            ),
        )
        app_key = await run_in_threadpool(svc.studio.app_key)
    elif isinstance(app_key, str) and isinstance(secret, str) and app_key and secret:
        await check_secret(
            request,
            app_key,
            lambda: svc.verifier.verify(app_key, secret),
            ApiError(ErrorCode.UNAUTHORIZED, "unauthorized: unknown app key or wrong secret", 401),
        )
    else:
        raise ApiError(ErrorCode.INVALID_PARAMETER, "body: give either token, or app_key and app_secret")
    session = await run_in_threadpool(svc.sessions.new, app_key)
    response = JSONResponse(ok({"signed_in": True, "app_key": app_key, "csrf": session.csrf}))
    svc.sessions.start(response, session)
    return response


@router.delete("/studio/session")
def sign_out(request: Request) -> JSONResponse:
    session = services(request).sessions.read(request)
    if session is not None and not session.allows(request):
        raise ApiError(ErrorCode.UNAUTHORIZED, "unauthorized: signing out needs the X-CSRF-Token header", 401)
    response = JSONResponse(ok({"signed_in": False}))
    services(request).sessions.end(response, session)
    return response
