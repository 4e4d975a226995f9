"""Tomoviee auth: `X-App-Key: K` plus `Authorization: Basic base64(K:secret)`; both must agree."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from ref2img.protocol import ErrorCode
from ref2img.server.errors import ApiError
from ref2img.server.sessions import Session
from ref2img.server.throttle import LaneBusy


def _unauthorized(why: str) -> ApiError:
    return ApiError(ErrorCode.UNAUTHORIZED, f"unauthorized: {why}", 401, {"WWW-Authenticate": "Basic"})


def parse_basic(header: str | None) -> tuple[str, str]:
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "basic" or not token:
        raise _unauthorized("send Authorization: Basic base64(app_key:app_secret)")
    try:
        app_key, sep, secret = base64.b64decode(token.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        raise _unauthorized("the Basic token is not valid base64") from None
    if not sep or not app_key or not secret:
        raise _unauthorized("the Basic token must hold app_key:app_secret")
    return app_key, secret


def client_address(request: Request) -> str:
    """The connection's address (uvicorn rewrites it from X-Forwarded-For only for --trusted-proxy)."""
    return request.client.host if request.client else ""


def _busy(wait: int) -> ApiError:
    return ApiError(
        ErrorCode.BUSY, f"busy: too many failed authentications; retry in {wait} s", 429, {"Retry-After": str(wait)}
    )


def refused(request: Request, app_key: str, unauthorized: ApiError) -> ApiError:
    """Count a failed authentication; the error to raise: 401, or 429 while this key from this address
    (or this address) is throttled (server/throttle.py)."""
    throttle, address = request.app.state.services.throttle, client_address(request)
    wait = throttle.retry_after(app_key, address)  # as it stood when the request came
    throttle.failed(app_key, address)
    return _busy(wait) if wait else unauthorized


async def check_secret(request: Request, app_key: str, verify: Callable[[], bool], unauthorized: ApiError) -> None:
    """Run `verify` off the event loop (one at a time while throttled, waiting on the loop, not in a
    thread: never refused when it holds); raise `refused(...)` when it does not."""
    throttle = request.app.state.services.throttle
    if throttle.retry_after(app_key, client_address(request)):
        try:
            verified = await throttle.one_at_a_time(verify)
        except LaneBusy:
            verified = False
    else:
        verified = await run_in_threadpool(verify)
    if not verified:
        raise refused(request, app_key, unauthorized)


async def authenticate(request: Request) -> str:
    """FastAPI dependency: the verified app key (raises 140013 / HTTP 401 otherwise; 680005 / HTTP 429
    for failures while throttled). Clients send Basic credentials; the studio page sends its session
    cookie instead (server/sessions.py)."""
    if "authorization" not in request.headers:
        session = request.app.state.services.sessions.read(request)
        if session is not None:
            return await _session_key(request, session)
    claimed_key = request.headers.get("x-app-key") or ""
    try:
        app_key, secret = _claimed_pair(request)
    except ApiError as exc:
        raise refused(request, claimed_key, exc) from None
    return await _verified(request, app_key, secret, _unauthorized("unknown app key or wrong secret"))


async def _verified(request: Request, app_key: str, secret: str, unauthorized: ApiError) -> str:
    verifier = request.app.state.services.verifier
    if verifier.verify_cached(app_key, secret):  # the common case: no store, no scrypt, no thread hop
        return app_key
    await check_secret(request, app_key, lambda: verifier.verify(app_key, secret), unauthorized)
    return app_key


def _bearer_refusal(why: str) -> ApiError:
    return ApiError(ErrorCode.UNAUTHORIZED, f"unauthorized: {why}", 401, {"WWW-Authenticate": "Bearer"})


async def authenticate_bearer(request: Request) -> str:
    """FastAPI dependency of the OpenAI-style routes: `Authorization: Bearer <app_key>:<app_secret>`, the
    same key, secret, throttle and refusals as Basic credentials (an API key in OpenAI's clients is one
    string, so the pair travels joined by a colon)."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    app_key, sep, secret = token.strip().partition(":")
    if scheme.lower() != "bearer" or not sep or not app_key or not secret:
        refusal = _bearer_refusal(
            "send Authorization: Bearer <app_key>:<app_secret> (as ref2img keys create prints it)"
        )
        raise refused(request, app_key if sep else "", refusal)
    return await _verified(request, app_key, secret, _bearer_refusal("unknown app key or wrong secret"))


async def _session_key(request: Request, session: Session) -> str:
    if not session.allows(request):
        raise _unauthorized("the studio session needs its X-CSRF-Token header on this request")
    if not await run_in_threadpool(request.app.state.services.sessions.is_live, session):
        raise _unauthorized("the studio session has ended (signed out or expired); sign in again")
    verifier = request.app.state.services.verifier
    live = verifier.is_live_cached(session.app_key) or await run_in_threadpool(verifier.is_live, session.app_key)
    if not live:
        raise _unauthorized("the session's app key was revoked; sign in again")
    return session.app_key


def _claimed_pair(request: Request) -> tuple[str, str]:
    app_key, secret = parse_basic(request.headers.get("authorization"))
    header_key = request.headers.get("x-app-key")
    if header_key is None:
        raise _unauthorized("the X-App-Key header is missing")
    if header_key != app_key:
        raise _unauthorized("X-App-Key does not match the Authorization credentials")
    return app_key, secret


# A route's parameter `app_key: AppKey` is the authenticated key (every way in, one dependency);
# `BearerKey` is the same for the OpenAI-style routes.
AppKey = Annotated[str, Depends(authenticate)]
BearerKey = Annotated[str, Depends(authenticate_bearer)]
